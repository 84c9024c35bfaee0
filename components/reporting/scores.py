"""Privacy, utility and overall scores of a defended system, from its measured attacks,
its utility and its threat model.

V = 1 - the largest SSIM of the reconstruction attacks, A = 1 - the largest advantage
(components.metrics.advantage: every attack on one scale, 0 at chance, 1 at total
success); privacy = 0.4 V + 0.6 A, the visual / attack weighting of the hybrid-masking
paper, over the attacks in the defense's scope (its threat model's `in_scope`; for
attribute inference, its `attributes`); privacy_all is the same over every attack that
ran. A defense that claims nothing (the baseline) is scored over every attack. With only
one of V and A measured, privacy is that one; with neither it is absent, never invented.

utility = the lower of accuracy / the baseline's and TAR@FAR=1e-3 / the baseline's,
capped at 1: a defense that keeps accuracy but collapses at the strict operating point
loses utility (the TAR ratio is left out when the baseline's TAR is 0). overall = the
harmonic mean of privacy and utility.

Intervals: each score's `ci95` applies these rules replicate by replicate to the bootstrap
replicates of its inputs (components.metrics.intervals: one identity weighs the same in
the defense's, the baseline's and every attack's figures of a replicate); an input without
replicates keeps its measured value.
"""

from __future__ import annotations

import math
from statistics import harmonic_mean

import numpy as np

from components.metrics.advantage import RESERVED
from components.metrics.intervals import as_arrays, intervals, with_values

RECONSTRUCTION_ATTACKS = ("template_inversion", "representation_recovery")
VISUAL_WEIGHT, ATTACK_WEIGHT = 0.4, 0.6


def advantages(attacks: dict, attributes=()) -> dict[str, float]:
    """Each measured attack's advantage; attribute inference's over `attributes` only when
    given (the largest of theirs), else its own (the largest over every attribute)."""
    out: dict[str, float] = {}
    for name, block in attacks.items():
        if name == "attribute_inference" and attributes:
            scoped = [block[a]["advantage"] for a in attributes if a in block and a not in RESERVED]
            if scoped:
                out[name] = max(scoped)
        elif "advantage" in block:
            out[name] = float(block["advantage"])
    return out


def privacy_of(attacks: dict, attributes=()) -> float | None:
    """0.4 (1 - max SSIM) + 0.6 (1 - max advantage) over these attacks (None: nothing measured)."""
    ssims = [attacks[a]["ssim"] for a in RECONSTRUCTION_ATTACKS if "ssim" in attacks.get(a, {})]
    adv = advantages(attacks, attributes)
    parts = []
    if ssims:
        parts.append((VISUAL_WEIGHT, 1.0 - max(ssims)))
    if adv:
        parts.append((ATTACK_WEIGHT, 1.0 - max(adv.values())))
    if not parts:
        return None
    value = sum(w * v for w, v in parts) / sum(w for w, _ in parts)
    return min(1.0, max(0.0, value))


def utility_of(utility: dict, baseline: dict) -> float:
    """The lower of the accuracy and TAR@FAR=1e-3 ratios to the baseline's, capped at 1."""
    if baseline["verification_accuracy"] <= 0:
        raise ValueError("baseline accuracy must be positive to normalise utility")
    ratios = [utility["verification_accuracy"] / baseline["verification_accuracy"]]
    if baseline.get("tar_at_far_1e-3", 0.0) > 0:
        ratios.append(utility["tar_at_far_1e-3"] / baseline["tar_at_far_1e-3"])
    return min(1.0, max(0.0, min(ratios)))


def compute_scores(attacks: dict, utility: dict, baseline_utility: dict, threat_model: dict | None = None) -> dict:
    """The `scores` block: utility always; privacy, privacy_all and overall when attacks
    were measured."""
    scores = {"utility": utility_of(utility, baseline_utility)}
    threat_model = threat_model or {}
    in_scope = threat_model.get("in_scope") or []
    privacy_all = privacy_of(attacks)
    if in_scope:
        privacy = privacy_of({a: attacks[a] for a in in_scope if a in attacks}, threat_model.get("attributes", ()))
    else:
        privacy = privacy_all
    if privacy_all is not None:
        scores["privacy_all"] = privacy_all
    if privacy is not None:
        scores["privacy"] = privacy
        scores["overall"] = harmonic_mean([privacy, scores["utility"]])   # 0 when either is 0
    return scores


def score_intervals(attacks: dict, utility: dict, baseline_utility: dict, threat_model: dict | None,
                    attack_replicates: dict, utility_replicates: dict, baseline_replicates: dict) -> dict:
    """{score: [lo, hi]}: `compute_scores` on each bootstrap replicate of its inputs
    (replicates as lists, {attack: {dotted measure: [...]}} and {utility key: [...]}). A
    replicate in which an input of a score is undefined gives that score no value (the
    other scores of the replicate stand)."""
    reps_a = {a: as_arrays(r) for a, r in (attack_replicates or {}).items() if a in attacks and r}
    used = ("verification_accuracy", "tar_at_far_1e-3")   # what utility_of reads
    reps_u = {k: v for k, v in as_arrays(utility_replicates or {}).items() if k in used}
    reps_b = {k: v for k, v in as_arrays(baseline_replicates or {}).items() if k in used}
    sizes = {len(v) for r in (*reps_a.values(), reps_u, reps_b) for v in r.values()}
    if not sizes:
        return {}
    if len(sizes) > 1:
        raise ValueError(f"replicates of different lengths {sorted(sizes)}: figures of one run share one bootstrap")
    n = sizes.pop()
    in_scope = set((threat_model or {}).get("in_scope") or attacks)
    out: dict[str, list] = {}
    for b in range(n):
        bad = {a for a, r in reps_a.items() if any(math.isnan(v[b]) for v in r.values())}
        bad_utility = any(math.isnan(v[b]) for r in (reps_u, reps_b) for v in r.values())
        a_b = {a: with_values(block, {k: float(v[b]) for k, v in reps_a.get(a, {}).items()})
               for a, block in attacks.items() if a not in bad}
        u_b = {**utility, **{k: float(v[b]) for k, v in reps_u.items()}}
        base_b = {**baseline_utility, **{k: float(v[b]) for k, v in reps_b.items()}}
        if not base_b.get("verification_accuracy", 0.0) > 0.0:   # a replicate that weighs no baseline pair right
            continue
        for k, v in compute_scores(a_b, u_b, base_b, threat_model).items():
            undefined = ((k == "utility" and bad_utility) or (k == "privacy_all" and bad)
                         or (k == "privacy" and bad & in_scope) or (k == "overall" and (bad_utility or bad & in_scope)))
            out.setdefault(k, [np.nan] * n)[b] = np.nan if undefined else v
    return intervals({k: np.asarray(v) for k, v in out.items()})
