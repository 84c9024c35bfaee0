"""Dagster metadata rounding: four significant digits whatever the magnitude, structure and
non-floats untouched."""

import numpy as np

from pipelines.metadata import meta_float, rounded


def test_floats_keep_four_significant_digits_at_any_scale():
    assert rounded(0.7519707207207207) == 0.752
    assert rounded(0.0012345678) == 0.001235
    assert rounded(241920.7) == 241900.0
    assert rounded(np.float32(0.93333334)) == 0.9333
    assert rounded({"a": [0.123456, {"b": 2}], "ok": True, "n": 7, "s": "x"}) == \
        {"a": [0.1235, {"b": 2}], "ok": True, "n": 7, "s": "x"}
    assert rounded(float("nan")) != rounded(float("nan")) and rounded(0.0) == 0.0
    assert meta_float(0.9390000000000001).value == 0.939
