"""Dagster metadata as a reader wants it in the UI: floats to four significant digits (a
verification accuracy over 3,000 pairs has no 16th digit), nested measures likewise."""

from __future__ import annotations

import math
import numbers

import dagster as dg

DIGITS = 4

__all__ = ["DIGITS", "meta_float", "meta_json", "rounded"]


def _significant(value: float, digits: int) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def rounded(obj, digits: int = DIGITS):
    """obj with every float (numpy's too) at `digits` significant digits; ints, bools,
    strings and the structure unchanged."""
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, bool) or isinstance(obj, numbers.Integral):
        return obj
    if isinstance(obj, numbers.Real):
        return _significant(float(obj), digits)
    return obj


def meta_float(value) -> dg.MetadataValue:
    return dg.MetadataValue.float(rounded(float(value)))


def meta_json(obj) -> dg.MetadataValue:
    return dg.MetadataValue.json(rounded(obj))
