"""The synthetic faces carry identity a model must learn: on identities it never saw, a
small trained FR model identifies far better than nearest-neighbour on raw pixels."""

from __future__ import annotations

import numpy as np
import pytest

from components.data.synthetic import SyntheticConfig, render_identity
from components.metrics.embeddings import extract_features
from components.metrics.verification import rank1
from components.models.fr_model import make_spec, train_fr_model

pytestmark = pytest.mark.integration


def dataset(n_ids: int, n_img: int, size: int):
    cfg = SyntheticConfig(identities=n_ids, images_per_identity=n_img, size=size, seed=3)
    images, labels = [], []
    for k in range(n_ids):
        imgs, _ = render_identity(cfg, k)
        images += imgs
        labels += [k] * len(imgs)
    return np.stack(images), np.asarray(labels)


def first_as_gallery(labels):
    first = np.zeros(len(labels), dtype=bool)
    first[np.unique(labels, return_index=True)[1]] = True
    return first


def test_trained_model_beats_raw_pixel_nearest_neighbour_on_unseen_identities():
    images, labels = dataset(90, 8, 32)
    train = labels < 60
    test_x, test_y = images[~train], labels[~train]
    g = first_as_gallery(test_y)

    pixels = test_x.reshape(len(test_x), -1).astype(np.float32)
    pixels -= pixels.mean(axis=1, keepdims=True)
    pixel_rank1 = rank1(pixels[g], test_y[g], pixels[~g], test_y[~g])

    spec = make_spec({"name": "resnet_small", "embedding_dim": 64, "widths": [16, 32, 64, 64]},
                     {"name": "arcface", "s": 32.0, "m": 0.3}, num_classes=60, input_size=32)
    model = train_fr_model(images[train], labels[train], spec,
                           {"epochs": 12, "batch_size": 64, "lr": 0.1, "seed": 0, "warmup_epochs": 1},
                           progress=False)
    feats = extract_features(model.backbone.eval(), test_x)
    model_rank1 = rank1(feats[g], test_y[g], feats[~g], test_y[~g])
    # measured: pixels 0.16, model 0.62 (30 unseen identities, 7 probes each)
    assert model_rank1 > pixel_rank1 + 0.2, (model_rank1, pixel_rank1)
