"""Adaptive attackers: one attack, several variants, the strongest one reported.

Why. A privacy claim holds only against the strongest attacker that knows the defense
(Carlini et al., "On Evaluating Adversarial Robustness", 2019; Athalye et al., BPDA, ICML
2018). An attack's params block may name variants, each a set of overrides of the block:

    attacks:
      model_inversion: {steps: 100, ..., variants: {adaptive: {init: mean_face, eot: 4}}}

`run_variants` runs the plain attack and every variant that applies to the system (an
attack may say why one does not, through `variant_applies(ctx, params)`, e.g. an
expectation over noise on a deterministic defense), and returns the strongest by
`advantage` (ties broken by the attack's `tie_break` measure, e.g. SSIM where SAR is 0
for every variant) as the headline: its measures, with `variant` naming it and `variants`
holding every variant's measures, and its strength with every variant's strength and the
variants that did not apply. An adaptive variant that loses to the plain one is reported
as it is. Ties go to the plain attack (first in order). Each variant's block carries the
95% intervals of its figures (`ci95`) when the context has a bootstrap; the headline's
replicates travel on for the scores' intervals.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.config import deep_merge
from components.metrics.intervals import intervals

__all__ = ["PLAIN", "run_variants", "split_variants", "with_intervals"]

PLAIN = "plain"


def split_variants(params: dict | None) -> tuple[dict, dict[str, dict]]:
    """(the attack's own params, {variant name: overrides}) of a params block."""
    own = dict(params or {})
    variants = own.pop("variants", None) or {}
    if not isinstance(variants, dict):
        raise ValueError(f"variants must map a name to overrides, got {type(variants).__name__}")
    if PLAIN in variants:
        raise ValueError(f"{PLAIN!r} is the attack without overrides; name the variant otherwise")
    return own, {str(k): dict(v or {}) for k, v in variants.items()}


def run_variants(attack, ctx: AttackContext) -> AttackResult:
    """The attack and its variants against `ctx.system` (see the module docstring). Raises
    NotApplicable when no variant applies (the plain attack's reason)."""
    own, variants = split_variants(ctx.params)
    results: dict[str, AttackResult] = {}
    skipped: dict[str, str] = {}
    plain_reason = None
    for name, overrides in [(PLAIN, {}), *variants.items()]:
        params = deep_merge(own, overrides)
        vctx = dataclasses.replace(ctx, params=params,
                                   workdir=ctx.workdir if name == PLAIN or ctx.workdir is None
                                   else Path(ctx.workdir) / name)
        check = getattr(attack, "variant_applies", None)
        reason = check(vctx, params) if (check is not None and name != PLAIN) else None
        if reason:
            skipped[name] = reason
            continue
        try:
            results[name] = attack.run(vctx)
        except NotApplicable as why:
            if name == PLAIN:
                plain_reason = str(why)
            skipped[name] = str(why)
    if not results:
        raise NotApplicable(plain_reason or "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    results = {n: with_intervals(r) for n, r in results.items()}
    tie = getattr(attack, "tie_break", None)

    def strength_of(n: str) -> tuple[float, float]:
        m = results[n].measures
        return float(m.get("advantage", 0.0)), float(m.get(tie, 0.0)) if tie else 0.0

    best = max(results, key=strength_of)   # max keeps the first of equals: the plain attack
    head = results[best]
    measures = {**head.measures, "variant": best,
                "variants": {n: _without_nesting(r.measures) for n, r in results.items()}}
    strength = {**head.strength,
                "variants": {n: {"overrides": variants.get(n, {}), **_without_nesting(r.strength)}
                             for n, r in results.items()}}
    if skipped:
        strength["variants_not_applicable"] = skipped
    artifacts = dict(head.artifacts)
    for n, r in results.items():
        if n != best:
            artifacts.update({f"{n}/{label}": path for label, path in r.artifacts.items()})
    return AttackResult(measures=measures, strength=strength, artifacts=artifacts, replicates=head.replicates)


def with_intervals(result: AttackResult) -> AttackResult:
    """`result` with `ci95` beside its figures: {"advantage": [lo, hi], ...} in the block and,
    for a replicate named "skin.advantage", {"advantage": [lo, hi]} in the block's "skin"."""
    measures = dict(result.measures)
    for path, ci in intervals(result.replicates).items():
        *parents, leaf = path.split(".")
        block = measures
        for key in parents:
            block[key] = dict(block[key])
            block = block[key]
        block.setdefault("ci95", {})[leaf] = ci
    return dataclasses.replace(result, measures=measures)


def _without_nesting(block: dict) -> dict:
    return {k: v for k, v in block.items() if k not in ("variant", "variants")}
