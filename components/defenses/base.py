"""The protocol every defended FR system follows (DESIGN.md section 3).

A defended system exposes the three surfaces attacks target: `protect` (what leaves the
client), `embed` (the FR model) and `template` (what the server stores). Verification
always runs through template(embed(protect(x))). A `Defense` trains or fits a system from
a `DefenseContext` and can rebuild an empty one from its config to load saved weights.

Enrolment and probe. `forward(x)` is the template the server STORES at enrolment;
`probe(x)` is the template a verification probe produces, compared against the stored
one. They are the same for every defense except those that alter stored templates only
(AdvFace): verification then scores cos(stored(a), probe(b)), and a template-inversion
attacker, who computes clean templates of its own images with the white-box model, trains
on `probe` and inverts the stored templates.

Sweeps. `privacy_knob` names the parameter that places a system on the privacy-utility
curve (e.g. "eps_mean"); the sweep asset builds one system per value in
params[<defense>]["sweep"]["values"] through `build_sweep` when the defense has it (to
share work between points, e.g. one shadow decoder for every eps) or else by calling
`build` with the knob overridden."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.models.fr_model import FRModel


_STRAIGHT_THROUGH = contextvars.ContextVar("privface_straight_through", default=False)


@contextlib.contextmanager
def straight_through():
    """Inside this block every defense's `clip` passes gradients through unchanged (a
    straight-through estimator, BPDA in Athalye et al., ICML 2018): an attacker who knows
    the defense differentiates through its clipping as if it were the identity. The
    forward values do not change."""
    token = _STRAIGHT_THROUGH.set(True)
    try:
        yield
    finally:
        _STRAIGHT_THROUGH.reset(token)


def clip(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """x clipped to [lo, hi] element-wise; straight-through inside `straight_through()`.
    Defenses clip through this (and set `clips = True` on the module) so that adaptive
    attackers can find them."""
    y = torch.maximum(torch.minimum(x, hi), lo)
    return x + (y - x).detach() if _STRAIGHT_THROUGH.get() else y


def clips_input(system: nn.Module) -> bool:
    """Whether any module of the system clips through `clip` (declares `clips = True`)."""
    return any(getattr(m, "clips", False) for m in system.modules())


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
        """The stored (enrolment) template."""
        return self.template(self.embed(self.protect(images)))

    def probe(self, images: torch.Tensor) -> torch.Tensor:
        """The template of a verification probe; the stored template unless overridden."""
        return self.forward(images)

    @property
    def has_probe(self) -> bool:
        """True when probes differ from stored templates (probe is overridden)."""
        return type(self).probe is not ProtectedSystem.probe

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

    def measures(self) -> dict:
        """Measures the defense took while building (plain floats / nested dicts, e.g. the
        share of image energy a mask removes); reported beside the attacks. Subclasses keep
        them in config() so that they survive a save/load round trip."""
        return dict(self.config().get("measures", {}))


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
    train_attributes: pd.DataFrame | None = None   # attribute columns (str) of train_images' rows, or None
    public_attributes: pd.DataFrame | None = None  # the same for public_images
    device: torch.device | str = "cpu"
    checkpoint_dir: Path | None = None
    on_epoch_end: Callable[[int, dict], None] | None = None
    progress: bool = True
    seed: int = 0
    extra: dict = field(default_factory=dict)


# What an attacker can reach (metrics.json `threat_model.protects` names these)
SURFACES = ("client_representation",   # what protect() sends
            "stored_templates",        # the server's template database
            "released_model",          # the FR model's weights, with or without its training head
            "template_attributes",     # soft attributes (sex, skin tone) readable from templates
            "training_images")         # the private faces the model was trained on


@dataclass(frozen=True)
class ThreatModel:
    """What a defense claims: the surfaces it protects and the attacks in its scope (its
    privacy score is taken over those; every attack still runs and is reported). For
    attribute inference, `attributes` names the columns it claims to hide (empty: all)."""

    protects: tuple[str, ...]
    in_scope: tuple[str, ...]
    note: str
    attributes: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [s for s in self.protects if s not in SURFACES]
        if unknown:
            raise ValueError(f"unknown surface(s) {unknown}; known: {SURFACES}")

    def to_dict(self) -> dict:
        out = {"protects": list(self.protects), "in_scope": list(self.in_scope), "note": self.note}
        if self.attributes:
            out["attributes"] = list(self.attributes)
        return out


class Defense(Protocol):
    name: str
    privacy_knob: str   # the parameter a sweep varies (e.g. "eps_mean"); "" when none

    def threat_model(self, params: dict) -> ThreatModel: ...

    def build(self, ctx: DefenseContext) -> ProtectedSystem: ...

    def rebuild(self, config: dict) -> ProtectedSystem: ...


def sweep_systems(defense, ctx: DefenseContext, values: list) -> list[ProtectedSystem]:
    """One system per value of the defense's privacy knob: `defense.build_sweep` when it
    has one, else `build` with params[knob] = value and a checkpoint folder per value."""
    knob = getattr(defense, "privacy_knob", "")
    if not knob:
        raise ValueError(f"defense {defense.name!r} has no privacy knob to sweep")
    if hasattr(defense, "build_sweep"):
        return list(defense.build_sweep(ctx, list(values)))
    systems = []
    for v in values:
        sub = dataclasses.replace(ctx, params={**ctx.params, knob: v},
                                  checkpoint_dir=None if ctx.checkpoint_dir is None
                                  else Path(ctx.checkpoint_dir) / f"{knob}={v}")
        systems.append(defense.build(sub))
    return systems


def system_bundle(system: ProtectedSystem) -> dict:
    """A saved system: plain data and tensors only (loadable with weights_only=True)."""
    return {
        "kind": "protected_system",
        "defense": system.defense,
        "config": system.config(),
        "operating_point": system.operating_point(),
        "state": {k: v.detach().cpu() for k, v in system.state_dict().items()},
    }
