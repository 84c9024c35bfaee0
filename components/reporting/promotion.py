"""The promotion gate (DESIGN.md section 8): may one defense's new model version become the
`champion` of its registered model?

It may when all three hold, each judged on the `scores` block of metrics.json:
- utility >= utility floor (verification accuracy relative to the baseline's);
- privacy >= privacy floor (a version with no measured privacy score fails here: an
  unmeasured privacy is not a safe one);
- overall > the current champion's overall, strictly: a tie keeps the model that earned the
  alias first. No champion yet, or the candidate already being the champion (a re-run of the
  same weights), leaves nothing to beat.
A version that fails gets `challenger`. Every reason carries the numbers it compared, so the
registry tags and the Dagster check say why without a second look."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]     # one line per rule, in order, with the numbers compared
    alias: str                   # CHAMPION when passed, else CHALLENGER

    def to_dict(self) -> dict:
        return {**asdict(self), "reasons": list(self.reasons)}


def _num(value) -> float | None:
    return None if value is None else float(value)


def gate_verdict(scores: Mapping[str, float], utility_floor: float, privacy_floor: float,
                 champion: Mapping | None = None, version: str | int | None = None) -> Verdict:
    """The verdict for a candidate with these `scores` ({utility, privacy?, overall?}).

    `champion` is the current champion as recorded in the registry: {"version", "overall"}
    (overall None when that version carries no recorded score), or None when there is none.
    `version` is the candidate's own version, to recognise a re-run of the champion."""
    for name, floor in (("utility_floor", utility_floor), ("privacy_floor", privacy_floor)):
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"gates.{name} must lie in [0, 1], got {floor}")
    utility, privacy, overall = (_num(scores.get(k)) for k in ("utility", "privacy", "overall"))
    checks: list[tuple[bool, str]] = []

    if utility is None:
        checks.append((False, f"no utility score; utility floor {utility_floor:.4f} not met"))
    else:
        ok = utility >= utility_floor
        checks.append((ok, f"utility {utility:.4f} {'>=' if ok else '<'} utility floor {utility_floor:.4f}"))

    if privacy is None:
        checks.append((False, f"no measured privacy score (no attack measured); "
                              f"privacy floor {privacy_floor:.4f} not met"))
    else:
        ok = privacy >= privacy_floor
        checks.append((ok, f"privacy {privacy:.4f} {'>=' if ok else '<'} privacy floor {privacy_floor:.4f}"))

    if champion is None:
        checks.append((True, "no champion yet: nothing to beat"))
    else:
        held = str(champion.get("version"))
        best = _num(champion.get("overall"))
        if version is not None and str(version) == held:
            checks.append((True, f"already the champion (v{held})"))
        elif best is None:
            checks.append((True, f"champion v{held} has no recorded overall score: nothing to beat"))
        elif overall is None:
            checks.append((False, f"no overall score to compare with champion v{held}'s {best:.4f}"))
        else:
            ok = overall > best
            checks.append((ok, f"overall {overall:.4f} {'>' if ok else '<='} champion v{held}'s {best:.4f}"))

    passed = all(ok for ok, _ in checks)
    return Verdict(passed=passed, reasons=tuple(r for _, r in checks), alias=CHAMPION if passed else CHALLENGER)
