"""Every attack on one scale: its advantage, in [0, 1], 0 at chance and 1 at total success,
so that the largest advantage over a defense's attacks compares like with like.

| attack | advantage |
|---|---|
| template inversion, representation recovery | SAR type 2 / the judge's own TAR on the same genuine pairs at the same threshold (a perfect reconstruction scores 1), capped at 1 |
| model inversion | top-1 of the judge rescaled by chance 1/K: (top1 - 1/K) / (1 - 1/K) |
| membership inference | 2 AUC - 1 (Yeom et al.'s membership advantage at the best threshold is at least this) |
| attribute inference | (balanced accuracy - chance) / (1 - chance), the largest over the attributes in scope |
| retrieval leakage | identity-level top-1 rescaled by its chance (sum of n_i^2 / N^2) |

Each is floored at 0: an attack that does worse than chance leaks nothing measurable.
"""

from __future__ import annotations

__all__ = ["rescaled", "ratio_to_ceiling", "from_auc", "RESERVED"]

# keys of an attack block that are not measures of one attribute (attribute_inference's
# block is {attribute: measures} beside these)
RESERVED = frozenset({"advantage", "variant", "variants", "ci95"})


def rescaled(rate: float, chance: float) -> float:
    """(rate - chance) / (1 - chance), in [0, 1]; 0 when chance is 1 (nothing to learn)."""
    if chance >= 1.0:
        return 0.0
    return float(min(1.0, max(0.0, (rate - chance) / (1.0 - chance))))


def ratio_to_ceiling(rate: float, ceiling: float) -> float:
    """rate / ceiling, in [0, 1]; 0 when the ceiling is 0 (the judge accepts nothing)."""
    if ceiling <= 0.0:
        return 0.0
    return float(min(1.0, max(0.0, rate / ceiling)))


def from_auc(auc: float) -> float:
    """2 AUC - 1, floored at 0."""
    return float(min(1.0, max(0.0, 2.0 * auc - 1.0)))
