"""The protocol every defended FR system follows (DESIGN.md section 3).

A defended system exposes the three surfaces attacks target: `protect` (what leaves the
client), `embed` (the FR model) and `template` (what the server stores). Verification
always runs through template(embed(protect(x))). A `Defense` trains or fits a system from
a `DefenseContext` and can rebuild an empty one from its config to load saved weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from components.models.fr_model import FRModel


class ProtectedSystem(nn.Module):
    """Base class: identity protection, L2-normalised templates. Subclasses override."""

    defense: str = "base"

    def protect(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def embed(self, representation: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def template(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.template(self.embed(self.protect(images)))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class cosines of the training identities through the whole system (no margin)."""
        head = getattr(self, "head", None)   # a submodule `head`, where the system has one
        if head is None:
            raise NotImplementedError(f"{self.defense}: no classifier head to query")
        return head.cosine(self.embed(self.protect(images)))

    def operating_point(self) -> dict:
        """The knobs that place this system on the privacy-utility curve (metrics.json `params`)."""
        return {}

    def config(self) -> dict:
        """Everything `Defense.rebuild` needs to recreate this system without weights."""
        return {}


@dataclass
class DefenseContext:
    """What a defense may use to build its system: private training data, public data
    (the server's own), the trained baseline, and where to keep checkpoints."""

    params: dict
    train_images: np.ndarray
    train_labels: np.ndarray
    public_images: np.ndarray
    public_labels: np.ndarray
    baseline: FRModel
    device: torch.device | str = "cpu"
    checkpoint_dir: Path | None = None
    on_epoch_end: Callable[[int, dict], None] | None = None
    progress: bool = True
    seed: int = 0
    extra: dict = field(default_factory=dict)


class Defense(Protocol):
    name: str

    def build(self, ctx: DefenseContext) -> ProtectedSystem: ...

    def rebuild(self, config: dict) -> ProtectedSystem: ...


def system_bundle(system: ProtectedSystem) -> dict:
    """A saved system: plain data and tensors only (loadable with weights_only=True)."""
    return {
        "kind": "protected_system",
        "defense": system.defense,
        "config": system.config(),
        "operating_point": system.operating_point(),
        "state": {k: v.detach().cpu() for k, v in system.state_dict().items()},
    }
