"""A defense's own operating point as one more point of its sweep.

Why. A sweep point and the defended system at its default knob value are the same system
measured the same way when the sweep changes nothing but the knob (no `params` override
for the sweep points, no `attack_params` override for its attacks): the battery already
built and attacked that point. Drawing it on the sweep's curve costs nothing; building it
again would cost a whole defense build and attack (the demo's time budget, DESIGN.md 9).
When the sweep does override something (e.g. shorter training for its points, or
named series), the operating point is not on the same curve and is left out."""

from __future__ import annotations

__all__ = ["with_operating_point"]


def with_operating_point(sweep: dict, result: dict) -> dict:
    """`sweep` (the defense_sweep value) with the defense's operating point added as a
    point (marked `"source": "operating point"`), sorted by knob value, when the sweep
    overrides nothing and the point is not already among its values; else `sweep` as is.
    `result`: the defense's report entry (params = operating point, utility, attacks,
    measures)."""
    knob, points = sweep.get("knob"), list(sweep.get("points") or [])
    op = dict(result.get("params") or {})
    if not points or not knob or knob not in op or sweep.get("params") or sweep.get("attack_params") \
            or sweep.get("series"):
        return sweep
    value = op[knob]
    if any(p["value"] == value for p in points):
        return sweep
    attacks = {a: result["attacks"][a] for a in sweep.get("attacks", []) if a in result.get("attacks", {})}
    if len(attacks) != len(sweep.get("attacks", [])):
        return sweep       # the battery did not measure what the sweep measures
    point = {"value": value, "operating_point": op, "utility": result["utility"], "attacks": attacks,
             "measures": dict(result.get("measures") or {}), "source": "operating point"}
    return {**sweep, "points": sorted(points + [point], key=lambda p: p["value"])}
