"""95% intervals around every figure, by a bootstrap over identities.

Why identities. The unit of a face dataset is the person: a person's images, pairs and
attack outcomes move together, so resampling images would count one lucky identity many
times over as independent evidence and give intervals far too narrow. The bootstrap here
resamples identities (the "subsets bootstrap" of Bolle et al., "Error analysis of pattern
recognition systems: the subsets bootstrap", CVIU 2004).

Why Poisson weights. Each identity gets a weight drawn from Poisson(1) per replicate (the
Poisson bootstrap, Hanley and MacGibbon 2006; Chamandy et al. 2012), from one table
seeded once per run and keyed by the identity. The same person therefore carries the same
weight in every measure of a replicate -- utility on the test identities, each attack on
its targets, the baseline's figures too -- so a derived figure (a ratio to the baseline, a
max over attacks, a harmonic mean) gets its own replicates by applying its formula
replicate by replicate, with the correlations between its parts kept.

| figure | weight of one observation |
|---|---|
| per-image or per-identity outcome (SSIM, a hit, a probe prediction) | w(its identity) |
| genuine pair | w(its identity) |
| impostor pair (a, b) | w(a) w(b) |

Thresholds chosen on the data (the 10-fold thresholds of verification accuracy, the
judge's SAR threshold) stay fixed across replicates, except TAR@FAR, whose threshold is
re-read from the weighted impostors of each replicate. The interval is the 2.5 and 97.5
percentiles of the replicates (percentile bootstrap); its coverage is checked by a seeded
simulation in tests/unit/test_intervals.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import numpy as np

__all__ = ["IdentityBootstrap", "interval", "intervals", "as_lists", "as_arrays", "with_values", "LEVEL"]

LEVEL = 0.95
_MIN_FINITE = 0.8   # an interval needs at least this share of replicates to be defined


class IdentityBootstrap:
    """B replicates of Poisson(1) weights, one per identity of `identities` (every identity
    of the dataset, so that all measures of a run share one table)."""

    def __init__(self, identities, replicates: int = 200, seed: int = 0):
        if int(replicates) < 2:
            raise ValueError(f"the bootstrap needs at least 2 replicates, got {replicates}")
        self.identities = np.unique(np.asarray(identities))
        if self.identities.size == 0:
            raise ValueError("the bootstrap needs at least one identity")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1D5]))
        self.table = rng.poisson(1.0, size=(int(replicates), self.identities.size)).astype(np.float64)
        self.seed = int(seed)
        h = hashlib.sha256(json.dumps([self.seed, int(replicates), self.identities.astype(str).tolist()]).encode())
        self.fingerprint = h.hexdigest()[:16]   # figures are combined replicate by replicate only when equal

    @property
    def replicates(self) -> int:
        return self.table.shape[0]

    def _columns(self, row_identities) -> np.ndarray:
        ids = np.asarray(row_identities)
        pos = np.searchsorted(self.identities, ids)
        pos = np.clip(pos, 0, self.identities.size - 1)
        unknown = self.identities[pos] != ids
        if np.any(unknown):
            raise ValueError(f"{int(unknown.sum())} row(s) have identities outside the bootstrap's table "
                             f"(e.g. {ids[unknown][:3].tolist()})")
        return pos

    def weights(self, row_identities) -> np.ndarray:
        """(B, n) weight of each row in each replicate: the weight of its identity."""
        return self.table[:, self._columns(row_identities)]

    def pair_weights(self, ids_a, ids_b) -> np.ndarray:
        """(B, n) weight of each pair: w(a) for a genuine pair, w(a) w(b) for an impostor."""
        wa, wb = self.weights(ids_a), self.weights(ids_b)
        same = np.asarray(ids_a) == np.asarray(ids_b)
        return np.where(same[None, :], wa, wa * wb)

    def mean(self, values, row_identities) -> np.ndarray:
        """(B,) weighted means of per-row `values` (NaN where a replicate drew none of them)."""
        w = self.weights(row_identities)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, w @ np.asarray(values, dtype=np.float64) / np.where(total > 0, total, 1), np.nan)

    def statistic(self, fn: Callable[[np.ndarray], float], row_identities) -> np.ndarray:
        """(B,) `fn(weights of the rows)` per replicate, for figures that are not means (an
        AUC, a balanced accuracy); NaN where fn fails on a degenerate replicate."""
        w = self.weights(row_identities)
        out = np.full(self.replicates, np.nan)
        for b in range(self.replicates):
            try:
                out[b] = float(fn(w[b]))
            except ValueError:   # e.g. a replicate that drew one class only
                pass
        return out


def interval(replicates, level: float = LEVEL) -> list[float] | None:
    """[low, high] percentile interval of the finite replicates; None when fewer than 80%
    of them are finite (the figure is not defined often enough to bound)."""
    r = np.asarray(replicates, dtype=np.float64).ravel()
    finite = r[np.isfinite(r)]
    if r.size == 0 or finite.size < _MIN_FINITE * r.size:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def intervals(replicates: dict[str, np.ndarray], level: float = LEVEL) -> dict[str, list[float]]:
    """{name: [low, high]} of every figure whose interval is defined."""
    out = {}
    for name, r in replicates.items():
        ci = interval(r, level)
        if ci is not None:
            out[name] = ci
    return out


def as_lists(replicates: dict[str, np.ndarray]) -> dict[str, list]:
    """Replicates as JSON lists (6 decimals; a NaN replicate as null), for asset values."""
    return {k: [None if not np.isfinite(x) else round(float(x), 6) for x in np.asarray(v, dtype=np.float64)]
            for k, v in replicates.items()}


def as_arrays(replicates: dict[str, list]) -> dict[str, np.ndarray]:
    """The inverse of `as_lists` (null back to NaN)."""
    return {k: np.array([np.nan if x is None else x for x in v], dtype=np.float64) for k, v in replicates.items()}


def with_values(block: dict, values: dict[str, float]) -> dict:
    """A copy of `block` with each dotted path of `values` ("advantage", "skin.advantage")
    set; the nested dicts on the way are copied, `block` is left as it was."""
    out = dict(block)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node[key] = dict(node[key])
            node = node[key]
        node[leaf] = value
    return out
