"""A small, real world for attack and defense tests: synthetic faces (60 identities x 8 images at
32 px, with sex/skin attributes), identity-disjoint splits (2 held-out photos of each train
identity), clean test pairs, a trained baseline system and an independent evaluation model.
Built once per test session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from components.attacks.base import AttackContext
from components.data.ingest import load_image_folder
from components.data.splits import assign_splits, make_pairs
from components.data.synthetic import SyntheticConfig, write_dataset
from components.data.views import split_attributes, split_view
from components.defenses import DefenseContext, get_defense, load_system, system_bundle
from components.models.fr_model import FRModel, make_spec, train_fr_model


DEFENSE_TRAIN = {"epochs": 8, "batch_size": 48, "lr": 0.1, "warmup_epochs": 1}


def round_trips(system, x: torch.Tensor, atol: float = 1e-5):
    """The system saved and loaded gives the same templates for model-ready images `x`
    under the same random draws; returns the loaded system."""
    again = load_system(system_bundle(system))
    torch.manual_seed(3)
    t1 = system(x)
    torch.manual_seed(3)
    t2 = again(x)
    assert torch.allclose(t1, t2, atol=atol)
    return again


@dataclass
class World:
    images: np.ndarray
    manifest: pd.DataFrame
    pairs: pd.DataFrame
    baseline: FRModel
    evaluation: FRModel

    def context(self, system, params: dict | None = None, defense: str = "baseline", tmp_path=None) -> AttackContext:
        return AttackContext(defense=defense, system=system, images=self.images, manifest=self.manifest,
                             pairs=self.pairs, evaluation=self.evaluation, params=params or {},
                             workdir=tmp_path, seed=0, progress=False)

    def defense_context(self, params: dict, checkpoint_dir=None, baseline_train: dict | None = None) -> DefenseContext:
        """A DefenseContext on this world's train and public splits (seed 0, no progress bars);
        `baseline_train` is what a defense's `train` block is merged over."""
        tx, ty, _ = split_view(self.images, self.manifest, "train")
        px, py, _ = split_view(self.images, self.manifest, "public")
        return DefenseContext(params=params, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                              baseline=self.baseline, train_attributes=split_attributes(self.manifest, "train"),
                              public_attributes=split_attributes(self.manifest, "public"), progress=False, seed=0,
                              checkpoint_dir=checkpoint_dir, extra={"baseline_train": baseline_train or DEFENSE_TRAIN})

    def baseline_system(self):
        tx, ty, _ = split_view(self.images, self.manifest, "train")
        px, py, _ = split_view(self.images, self.manifest, "public")
        ctx = DefenseContext(params={}, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                             baseline=self.baseline, progress=False)
        return get_defense("baseline").build(ctx).eval()


def _train(images, manifest, backbone, head, seed):
    x, y, _ = split_view(images, manifest, "train")
    spec = make_spec(backbone, head, num_classes=int(y.max()) + 1, input_size=32)
    return train_fr_model(x, y, spec, {"epochs": 10, "batch_size": 48, "lr": 0.1, "seed": seed,
                                       "warmup_epochs": 1}, progress=False)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("attack-world") / "faces"
    write_dataset(root, SyntheticConfig(identities=60, images_per_identity=8, size=32, seed=11), progress=False)
    ds = load_image_folder(root, size=32, progress=False)
    manifest = assign_splits(ds.manifest, {"train": 0.5, "test": 0.25, "public": 0.25}, seed=0,
                             holdout_per_identity=2)   # 2 photos of each train identity no model trains on
    pairs = make_pairs(manifest, split="test", n_folds=10, pairs_per_fold=40, seed=0)
    torch.set_num_threads(2)
    baseline = _train(ds.images, manifest, {"name": "resnet_small", "embedding_dim": 64, "widths": [16, 32, 64, 64]},
                      {"name": "arcface", "s": 32.0, "m": 0.3}, seed=0)
    evaluation = _train(ds.images, manifest, {"name": "resnet_small", "embedding_dim": 64, "widths": [12, 24, 48, 64]},
                        {"name": "cosface", "s": 32.0, "m": 0.25}, seed=1)
    return World(images=ds.images, manifest=manifest, pairs=pairs, baseline=baseline, evaluation=evaluation)
