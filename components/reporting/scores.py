"""Privacy, utility and overall scores of a defended system (DESIGN.md section 5).

V = 1 - max SSIM over the reconstruction attacks; A = 1 - max attack success (SAR type 2,
model-inversion top-1, membership advantage 2 AUC - 1, attribute advantage, retrieval
top-1); privacy = 0.4 V + 0.6 A, the visual/attack weighting of the hybrid-masking paper.
Only measured attacks count: with only one of V and A measured, privacy is that one;
with neither, privacy and overall are absent rather than invented. The attribute
advantage is the probe's balanced accuracy above chance, rescaled to [0, 1]:
(bacc - chance) / (1 - chance), floored at 0."""

from __future__ import annotations

from statistics import harmonic_mean

RECONSTRUCTION_ATTACKS = ("template_inversion", "representation_recovery")


def attack_successes(attacks: dict) -> dict[str, float]:
    """Each measured attack's success rate in [0, 1], named by where it came from."""
    out: dict[str, float] = {}
    for name in RECONSTRUCTION_ATTACKS:
        if name in attacks and "sar_type2" in attacks[name]:
            out[f"{name}.sar_type2"] = attacks[name]["sar_type2"]
    if "model_inversion" in attacks:
        out["model_inversion.top1"] = attacks["model_inversion"]["top1"]
    if "membership_inference" in attacks:
        out["membership_inference.advantage"] = max(0.0, 2 * attacks["membership_inference"]["auc"] - 1)
    for attr, m in attacks.get("attribute_inference", {}).items():
        chance = m["chance"]
        adv = (m["balanced_accuracy"] - chance) / (1 - chance) if chance < 1 else 0.0
        out[f"attribute_inference.{attr}"] = max(0.0, adv)
    if "retrieval_leakage" in attacks:
        out["retrieval_leakage.top1"] = attacks["retrieval_leakage"]["top1"]
    return out


def compute_scores(attacks: dict, accuracy: float, baseline_accuracy: float) -> dict:
    """The `scores` block: utility always, privacy and overall when attacks were measured."""
    if baseline_accuracy <= 0:
        raise ValueError("baseline accuracy must be positive to normalise utility")
    scores = {"utility": min(1.0, accuracy / baseline_accuracy)}
    ssims = [attacks[a]["ssim"] for a in RECONSTRUCTION_ATTACKS if a in attacks]
    successes = attack_successes(attacks)
    parts = []
    if ssims:
        parts.append((0.4, 1.0 - max(ssims)))
    if successes:
        parts.append((0.6, 1.0 - max(successes.values())))
    if parts:
        weight = sum(w for w, _ in parts)
        privacy = sum(w * v for w, v in parts) / weight
        scores["privacy"] = min(1.0, max(0.0, privacy))
        scores["overall"] = harmonic_mean([scores["privacy"], scores["utility"]])
    return scores
