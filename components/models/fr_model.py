"""A face-recognition model as plain data: a spec (names and sizes), backbone and head.

Models travel between assets and into MLflow as `to_bundle()` dicts of tensors, numbers
and strings, so that `torch.load(..., weights_only=True)` can read them back and no
pickled object ever crosses a process boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from components.models import get_backbone
from components.models.heads import get_head


@dataclass
class FRModel:
    backbone: nn.Module
    head: nn.Module
    spec: dict
    history: list[dict] = field(default_factory=list)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def make_spec(backbone: dict, head: dict, num_classes: int, in_channels: int = 3,
              input_size: int = 64) -> dict:
    """The architecture of an FR model, from the `backbone` and `head` blocks of params."""
    bb = dict(backbone)
    hd = dict(head)
    return {
        "backbone": {"name": bb.pop("name"), "kwargs": bb},
        "head": {"name": hd.pop("name"), "kwargs": hd},
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "input_size": int(input_size),
    }


def build_fr_model(spec: dict) -> FRModel:
    """An untrained model of the given spec (seed torch before calling for fixed init)."""
    bkw = dict(spec["backbone"]["kwargs"])
    for key in ("widths", "blocks"):
        if key in bkw:
            bkw[key] = tuple(bkw[key])
    embedding_dim = bkw.pop("embedding_dim", 128)
    backbone = get_backbone(spec["backbone"]["name"], in_channels=spec["in_channels"],
                            embedding_dim=embedding_dim, input_size=spec["input_size"], **bkw)
    head = get_head(spec["head"]["name"], embedding_dim, spec["num_classes"],
                    **spec["head"]["kwargs"])
    return FRModel(backbone=backbone, head=head, spec=spec)


def to_bundle(model: FRModel) -> dict:
    return {
        "kind": "fr_model",
        "spec": model.spec,
        "backbone": {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "history": model.history,
    }


def from_bundle(bundle: dict) -> FRModel:
    if bundle.get("kind") != "fr_model":
        raise ValueError(f"not an FR model bundle (kind={bundle.get('kind')!r})")
    model = build_fr_model(bundle["spec"])
    model.backbone.load_state_dict(bundle["backbone"])
    model.head.load_state_dict(bundle["head"])
    model.history = list(bundle.get("history", []))
    model.backbone.eval()
    model.head.eval()
    return model


def train_fr_model_and_result(images: np.ndarray, labels: np.ndarray, spec: dict, train: dict,
                              device: torch.device | str = "cpu", checkpoint_dir: str | Path | None = None,
                              on_epoch_end: Callable[[int, dict], None] | None = None,
                              progress: bool = True):
    """`train_fr_model`, also returning the loop's TrainResult (resumed_from, samples_seen),
    which the torchrun worker reports."""
    from components.training.loop import TrainConfig, train_classifier

    cfg = TrainConfig(**{**train, "progress": progress})
    torch.manual_seed(cfg.seed)
    model = build_fr_model(spec)
    result = train_classifier(model.backbone, model.head, images, torch.as_tensor(labels),
                              cfg, device=device, checkpoint_dir=checkpoint_dir,
                              on_epoch_end=on_epoch_end)
    model.backbone.to("cpu").eval()
    model.head.to("cpu").eval()
    model.history = result.history
    return model, result


def train_fr_model(images: np.ndarray, labels: np.ndarray, spec: dict, train: dict,
                   device: torch.device | str = "cpu", checkpoint_dir: str | Path | None = None,
                   on_epoch_end: Callable[[int, dict], None] | None = None,
                   progress: bool = True) -> FRModel:
    """Train a fresh model of `spec` on (images, labels) with the shared training loop."""
    return train_fr_model_and_result(images, labels, spec, train, device=device, checkpoint_dir=checkpoint_dir,
                                     on_epoch_end=on_epoch_end, progress=progress)[0]
