"""The attack registry. Adding an attack = one module here + one entry in ATTACKS; the
attack asset, the report and metrics.json iterate this mapping. The battery itself
(template inversion, representation recovery, model inversion, membership and attribute
inference) lands with issue #3; until then the mapping is empty and no attack result is
reported (none is faked)."""

from __future__ import annotations

from components.attacks.base import Attack, AttackContext, AttackResult, NotApplicable

ATTACKS: dict[str, Attack] = {}

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackResult", "NotApplicable"]
