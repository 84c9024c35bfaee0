"""What the method benchmarks read from a finished `make demo` store (read only): the
dataset, its splits and pairs, the baseline and the evaluation model, and the contexts
that build a defense and run an attack on them, as the pipeline's assets would."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.attacks import ATTACKS
from components.attacks.base import AttackContext, AttackResult
from components.attacks.variants import run_variants, with_intervals
from components.config import load_params
from components.data.views import split_attributes, split_view
from components.defenses import DefenseContext
from components.metrics.intervals import IdentityBootstrap
from components.models.fr_model import FRModel, from_bundle
from pipelines.io_manager import fetch

__all__ = ["DemoStore", "bench_parser", "load_store", "rounded"]


@dataclass
class DemoStore:
    params: dict
    images: np.ndarray
    manifest: pd.DataFrame
    pairs: pd.DataFrame
    baseline: FRModel
    root: Path
    _evaluation: FRModel | None = field(default=None, repr=False)

    @property
    def evaluation(self) -> FRModel:
        if self._evaluation is None:
            self._evaluation = from_bundle(fetch(self.root / "evaluation_fr_model" / "__all__"))
        return self._evaluation

    def block(self, name: str, overrides: dict | None = None) -> dict:
        """A deep copy of the profile's params block `name` with `overrides` merged on top."""
        return {**json.loads(json.dumps(self.params.get(name, {}))), **(overrides or {})}

    def defense_context(self, block: dict, seed: int = 0, **kw) -> DefenseContext:
        tx, ty, _ = split_view(self.images, self.manifest, "train")
        px, py, _ = split_view(self.images, self.manifest, "public")
        return DefenseContext(params=block, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                              baseline=self.baseline, train_attributes=split_attributes(self.manifest, "train"),
                              public_attributes=split_attributes(self.manifest, "public"), progress=False,
                              seed=seed, extra={"baseline_train": self.params["baseline"]["train"]}, **kw)

    def attack(self, name: str, defense: str, system, params: dict | None = None, seed: int = 0,
               variants: bool = True, workdir: Path | None = None) -> AttackResult:
        """The attack `name` (its profile block, or `params`) against `system`, with the
        pipeline's identity-bootstrap intervals; with `variants`, the plain attack and its
        adaptive variants, headline the strongest."""
        block = self.block("attacks").get(name, {}) if params is None else params
        boot = IdentityBootstrap(self.manifest["identity"].to_numpy(), self.params["intervals"]["replicates"],
                                 self.params["seed"])   # the pipeline's intervals (pipelines/resources.py)
        ctx = AttackContext(defense=defense, system=system, images=self.images, manifest=self.manifest,
                            pairs=self.pairs, evaluation=self.evaluation, params=block, seed=seed, progress=False,
                            workdir=workdir, bootstrap=boot)
        torch.manual_seed(seed)
        return run_variants(ATTACKS[name], ctx) if variants else with_intervals(ATTACKS[name].run(ctx))


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser with the options every store benchmark shares."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="artifacts/demo/store", help="a finished `make demo` store (read only)")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def load_store(store: str | Path = "artifacts/demo/store", profile: str = "demo") -> DemoStore:
    root = Path(store)
    if not (root / "face_dataset").exists():
        raise SystemExit(f"{root}: no demo store here (run `make demo` first, or pass --store)")
    ds = fetch(root / "face_dataset" / "__all__")
    splits = fetch(root / "dataset_splits" / "__all__")
    return DemoStore(load_params("params.yaml", profile), ds.images, splits["manifest"], splits["pairs"],
                     from_bundle(fetch(root / "baseline_fr_model" / "__all__")), root)


def rounded(d, digits: int = 4):
    """Floats of a nested measures block rounded for one JSON line."""
    if isinstance(d, dict):
        return {k: rounded(v, digits) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [rounded(v, digits) for v in d]
    return round(d, digits) if isinstance(d, float) else d
