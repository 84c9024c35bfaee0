"""reports/metrics.json: assembled from per-defense results, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from components.atomic import atomic_write_text
from components.metrics.advantage import RESERVED
from components.reporting.scores import compute_scores, score_intervals

UTILITY_KEYS = ("verification_accuracy", "verification_std", "tar_at_far_1e-3", "eer", "rank1")
OPTIONAL_UTILITY_KEYS = ("impostor_pairs", "ci95")   # the impostor scores behind TAR@FAR; 95% intervals


def _finite(obj, where="metrics"):
    """Refuse NaN/inf anywhere: a metric that was not measured is absent, not NaN."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _finite(v, f"{where}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where} is {obj}; metrics must be finite")


def build_metrics(dataset: dict, results: dict[str, dict], baseline: str = "baseline") -> dict:
    """`results[defense]` holds "params", "utility", "attacks" (possibly empty) and
    "mlflow", optionally "threat_model" (what the defense claims; scores.compute_scores),
    "measures" (taken by the defense while building) and "sweep" ({"knob", "points"}:
    utility and targeted attacks per value of the privacy knob); scores are computed here,
    relative to the baseline's utility."""
    if baseline not in results:
        raise ValueError(f"the {baseline!r} defense is needed to normalise utility scores")
    base_utility = results[baseline]["utility"]
    defenses = {}
    for name, r in results.items():
        missing = [k for k in UTILITY_KEYS if k not in r["utility"]]
        if missing:
            raise ValueError(f"defense {name!r}: utility lacks {missing}")
        threat_model = dict(r.get("threat_model") or {})
        scores = compute_scores(r.get("attacks", {}), r["utility"], base_utility, threat_model)
        tables = {r["utility"].get("bootstrap"), base_utility.get("bootstrap"), r.get("bootstrap")} - {None}
        if len(tables) > 1:
            raise ValueError(f"defense {name!r}: its figures and the baseline's come from different bootstrap "
                             f"tables ({sorted(tables)}): materialize its partitions and the baseline's with one "
                             f"params.yaml (seed, intervals) so that their intervals can be combined")
        ci = score_intervals(r.get("attacks", {}), r["utility"], base_utility, threat_model, r.get("replicates", {}),
                             r["utility"].get("replicates", {}), base_utility.get("replicates", {}))
        if ci:
            scores["ci95"] = ci
        entry = {
            "params": dict(r.get("params", {})),
            "threat_model": threat_model,
            "utility": _utility_block(r["utility"]),
            "attacks": dict(r.get("attacks", {})),
            "scores": scores,
            "mlflow": dict(r.get("mlflow", {})),
        }
        if r.get("not_applicable"):
            entry["not_applicable"] = dict(r["not_applicable"])
        if r.get("measures"):
            entry["measures"] = dict(r["measures"])     # what the defense measured while building
        if r.get("sweep", {}).get("points"):
            entry["sweep"] = {"knob": r["sweep"]["knob"], "points": [
                {k: p[k] for k in ("value", "series", "operating_point", "attacks", "measures", "source") if k in p}
                | {"utility": _utility_block(p["utility"], required=())}
                for p in r["sweep"]["points"]]}
        defenses[name] = entry
    metrics = {"dataset": dict(dataset), "defenses": defenses}
    _finite(metrics)
    return metrics


def _utility_block(utility: dict, required=UTILITY_KEYS) -> dict:
    """The figures of a utility block, the impostors behind TAR@FAR and the `ci95`; the
    bootstrap replicates stay out of metrics.json (they serve the scores' intervals)."""
    out = {k: float(utility[k]) for k in required}
    return out | {k: v for k, v in utility.items() if k not in required and (
        k in OPTIONAL_UTILITY_KEYS or (not required and k in UTILITY_KEYS))}


def write_json(obj: dict, path: str | Path) -> Path:
    """Atomic JSON write: a crash never leaves a half-written metrics file."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


ATTACK_COLUMNS = {
    # column: (attack, measure); n/a where the attack was not run against a defense
    "TI ssim": ("template_inversion", "ssim"),
    "TI sar2": ("template_inversion", "sar_type2"),
    "RR ssim": ("representation_recovery", "ssim"),
    "MI top1": ("model_inversion", "top1"),
    "MIA auc": ("membership_inference", "auc"),
}


def _attribute_gain(attacks: dict) -> float | None:
    """Largest balanced-accuracy gain of the attribute probe over chance."""
    gains = [m["balanced_accuracy"] - m["chance"] for a, m in attacks.get("attribute_inference", {}).items()
             if a not in RESERVED]
    return max(gains) if gains else None


def _ci_text(ci) -> str | None:
    return None if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_rows(metrics: dict) -> list[dict]:
    """One flat row per defense for tables (CLI, README, report): utility, then attack
    success, then scores."""
    rows = []
    for name, d in metrics["defenses"].items():
        u, s, a = d["utility"], d["scores"], d["attacks"]
        row = {
            "defense": name,
            "accuracy": u["verification_accuracy"],
            "std": u["verification_std"],
            "tar@far=1e-3": u["tar_at_far_1e-3"],
            "eer": u["eer"],
            "rank1": u["rank1"],
        }
        for column, (attack, measure) in ATTACK_COLUMNS.items():
            row[column] = a.get(attack, {}).get(measure)
        row["attr gain"] = _attribute_gain(a)
        ci = s.get("ci95", {})
        row.update({"privacy": s.get("privacy"), "privacy 95% CI": _ci_text(ci.get("privacy")),
                    "privacy all": s.get("privacy_all"), "utility": s["utility"],
                    "utility 95% CI": _ci_text(ci.get("utility")), "overall": s.get("overall"),
                    "overall 95% CI": _ci_text(ci.get("overall"))})
        rows.append(row)
    return rows
