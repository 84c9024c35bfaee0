"""The attack registry. Adding an attack = one module here + one entry in ATTACKS; the
attack asset, the report and metrics.json iterate this mapping. Order is the order of
the battery in the report."""

from __future__ import annotations

from components.attacks import (attribute_inference, membership_inference, model_inversion,
                                representation_recovery, retrieval_leakage, template_inversion)
from components.attacks.base import Attack, AttackContext, AttackResult, NotApplicable

ATTACKS: dict[str, Attack] = {
    "template_inversion": template_inversion.ATTACK,
    "representation_recovery": representation_recovery.ATTACK,
    "model_inversion": model_inversion.ATTACK,
    "membership_inference": membership_inference.ATTACK,
    "attribute_inference": attribute_inference.ATTACK,
    "retrieval_leakage": retrieval_leakage.ATTACK,    # FaceMAE: published reconstructions of training faces
}

__all__ = ["ATTACKS", "Attack", "AttackContext", "AttackResult", "NotApplicable"]
