"""A multi-seed study: the same profile trained and attacked with several seeds, reported as
mean and spread per defense.

Why. A bootstrap interval (`ci95`) says how much a figure would move with other people;
it cannot say how much it moves with another training run of the same defense on the same
people (initialisation, batch order, the defense's own noise). Privacy scores are a max
over several noisy attacks, so a difference between two defenses means something only when
it exceeds both. The study retrains every defense (and the baseline it is compared with)
with N seeds and keeps the data, the split and the judge fixed.

What varies with seed k: `seed` (defense training, attacks, the bootstrap) and the FR
training seed of the baseline (`baseline.train.seed`), which the defenses that train their
own FR model inherit; seed 0 is the profile as it stands.
"""

from __future__ import annotations

from statistics import mean, stdev

__all__ = ["seed_overrides", "study_rows", "study_table", "STUDY_FIGURES"]

# (column, path into a defense's metrics.json block); attacks are added per defense
STUDY_FIGURES = (
    ("accuracy", ("utility", "verification_accuracy")),
    ("tar@far=1e-3", ("utility", "tar_at_far_1e-3")),
    ("privacy", ("scores", "privacy")),
    ("privacy all", ("scores", "privacy_all")),
    ("utility", ("scores", "utility")),
    ("overall", ("scores", "overall")),
)


def seed_overrides(k: int, base: dict) -> dict:
    """The params overrides of seed k of a study over the profile's params `base` (seed 0:
    none, so the study's first run is the profile's own and may move its champions, as a
    `privface run` does). Later seeds register their models under a prefix of their own."""
    if k == 0:
        return {}
    return {"seed": int(base["seed"]) + k,
            "baseline": {"train": {"seed": int(base["baseline"]["train"]["seed"]) + k}},
            "mlflow": {"registered_model_prefix": f"{base['mlflow']['registered_model_prefix']}-seed{k}"}}


def _get(block: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(block, dict) or key not in block:
            return None
        block = block[key]
    return block if isinstance(block, (int, float)) and not isinstance(block, bool) else None


def study_rows(runs: list[dict]) -> list[dict]:
    """One row per defense and figure: the figure of each seed's metrics.json, its mean,
    sample standard deviation over the seeds (None with one value), min and max. `runs` are
    metrics.json objects."""
    if not runs:
        raise ValueError("a study needs at least one run")
    defenses = list(dict.fromkeys(d for r in runs for d in r["defenses"]))
    rows = []
    for name in defenses:
        blocks = [r["defenses"].get(name, {}) for r in runs]
        attacks = list(dict.fromkeys(a for b in blocks for a in b.get("attacks", {})))
        figures = list(STUDY_FIGURES) + [(f"{a} advantage", ("attacks", a, "advantage")) for a in attacks]
        for column, path in figures:
            values = [_get(b, path) for b in blocks]
            seen = [v for v in values if v is not None]
            if not seen:
                continue
            rows.append({"defense": name, "figure": column, "values": values, "mean": mean(seen),
                         "sd": stdev(seen) if len(seen) > 1 else None, "min": min(seen), "max": max(seen),
                         "seeds": len(seen)})
    return rows


def study_table(rows: list[dict], figures=("accuracy", "tar@far=1e-3", "privacy", "privacy all", "utility",
                                           "overall")) -> str:
    """A markdown table, one line per defense, `mean ± sd` of each figure over the seeds."""
    by = {(r["defense"], r["figure"]): r for r in rows}
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    lines = ["| defense | " + " | ".join(figures) + " |", "|---|" + "---|" * len(figures)]
    for d in defenses:
        cells = []
        for f in figures:
            r = by.get((d, f))
            if r is None:
                cells.append("n/a")
            elif r["sd"] is None:
                cells.append(f"{r['mean']:.3f}")
            else:
                cells.append(f"{r['mean']:.3f} ± {r['sd']:.3f}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
