"""The protocol of a privacy attack against a defended system (DESIGN.md section 7).

An attack sees only what its threat model grants: public identities to train on, the
defended system's exposed surfaces, and private identities only as targets. It returns
its measures, its strength (data size, epochs, lr, architecture) and artifact files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from components.defenses.base import ProtectedSystem
from components.models.fr_model import FRModel


class NotApplicable(Exception):
    """Raised by `Attack.run` when the data does not allow the attack (e.g. no attribute
    columns); the reason is reported instead of a result."""


@dataclass
class AttackContext:
    defense: str
    system: ProtectedSystem
    images: np.ndarray            # canonical uint8 store, indexed by manifest `index`
    manifest: pd.DataFrame        # with `split`
    pairs: pd.DataFrame           # clean test verification pairs
    evaluation: FRModel           # independent judge
    params: dict                  # the attack's block of params
    device: torch.device | str = "cpu"
    workdir: Path | None = None
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)
    shared: object | None = None  # components.attacks.sharing.SharedWork: attacker work shared between systems
    bootstrap: object | None = None   # components.metrics.intervals.IdentityBootstrap: intervals when given


@dataclass
class AttackResult:
    measures: dict                # the metrics.json block of this attack
    strength: dict                # attacker data size, epochs, lr, architecture
    artifacts: dict[str, Path] = field(default_factory=dict)
    # bootstrap replicates of measures ({"advantage": (B,), "skin.advantage": (B,), ...}): the
    # attack's `ci95` and the scores' intervals are read from them (components.metrics.intervals)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)


class Attack(Protocol):
    name: str

    def applies_to(self, system: ProtectedSystem) -> str | None:
        """None when the attack applies, else the reason it does not."""

    def run(self, ctx: AttackContext) -> AttackResult: ...
