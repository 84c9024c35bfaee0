"""Manifest schema (pandera) and the data-quality suite (Great Expectations 1.x)."""

from __future__ import annotations

import pandas as pd
import pytest

from components.data.errors import DataError
from components.data.schema import ManifestSchema, attribute_columns, validate_manifest

SIZE = 32


@pytest.fixture
def manifest(att_faces_small) -> pd.DataFrame:
    """A fresh, mutable copy of the att_faces manifest with a `sex` attribute column."""
    m = att_faces_small.manifest.copy()
    m["sex"] = pd.array(["F" if i % 2 else "M" for i in m["identity"]], dtype="str")
    return m


# --------------------------------------------------------------------------- pandera schema


def test_schema_accepts_good_manifest(manifest):
    out = validate_manifest(manifest)
    assert len(out) == len(manifest)
    assert attribute_columns(manifest) == ["sex"]
    with_split = manifest.assign(split=["train", "val", "test", "public"] * 100)
    validate_manifest(with_split)
    ManifestSchema.validate(with_split)  # the model is usable directly too


def _reject(df: pd.DataFrame, *needles: str) -> str:
    with pytest.raises(DataError) as info:
        validate_manifest(df)
    msg = str(info.value)
    assert msg.startswith("manifest: ")
    for n in needles:
        assert n in msg, msg
    return msg


def test_schema_rejects_bad_split_value(manifest):
    m = manifest.assign(split="train")
    m.loc[5, "split"] = "validation"
    _reject(m, "'split'", "validation", "rows [5]")


def test_schema_rejects_pixel_max_300(manifest):
    manifest.loc[3, "pixel_max"] = 300
    _reject(manifest, "'pixel_max'", "300")


def test_schema_rejects_min_above_max(manifest):
    manifest.loc[4, ["pixel_min", "pixel_max"]] = [200, 100]
    _reject(manifest, "pixel_min <= pixel_max", "rows [4]")


def test_schema_rejects_one_channel(manifest):
    manifest.loc[7, "channels"] = 1
    _reject(manifest, "'channels'", "equal_to(3)")


def test_schema_rejects_single_image_identity(manifest):
    manifest.loc[8, "identity_images"] = 1
    _reject(manifest, "'identity_images'", "greater_than_or_equal_to(2)")


def test_schema_rejects_identity_with_two_names(manifest):
    manifest.loc[11, "identity_name"] = "someone_else"
    _reject(manifest, "exactly one identity_name", "11")


def test_schema_rejects_non_square_bad_hash_missing_column_and_null_attribute(manifest):
    manifest.loc[0, "height"] = 31
    manifest.loc[1, "content_hash"] = "not-a-hash"
    manifest.loc[2, "sex"] = None
    manifest.loc[3, "index"] = 0
    m = manifest.drop(columns=["path"])
    msg = _reject(m, "height == width", "content_hash", "not-a-hash", "'sex'", "missing column(s) 'path'",
                  "'index'")
    assert msg.count("\n") >= 5  # lazy: every failure is listed, one per line


def test_schema_rejects_non_string_attribute(manifest):
    manifest["age"] = 42
    _reject(manifest, "'age'", "non-empty string")


# --------------------------------------------------------------------------- GX suite


def _failed(report) -> set[tuple[str, str]]:
    return {(r["expectation"], r["column"]) for r in report.results if not r["success"]}


def test_gx_suite_good_and_bad_manifests(manifest, tmp_path):
    """One test so the slow GX import and context set-up are paid once."""
    from components.data.quality import QualityReport, run_quality_suite

    allowed = {"sex": ["F", "M"]}

    good = run_quality_suite(manifest, image_size=SIZE, min_identities=40, attribute_values=allowed)
    assert isinstance(good, QualityReport)
    assert good.success, good.summary()
    assert good.docs_index is None
    kinds = {(r["expectation"], r["column"]) for r in good.results}
    assert ("expect_column_values_to_be_unique", "content_hash") in kinds
    assert ("expect_column_values_to_be_in_set", "sex") in kinds
    for r in good.results:
        assert set(r) == {"expectation", "column", "success", "observed"} and isinstance(r["observed"], str)

    # duplicated image content
    dup = manifest.copy()
    dup.loc[5, "content_hash"] = dup.loc[17, "content_hash"]
    rep = run_quality_suite(dup, image_size=SIZE, attribute_values=allowed)
    assert not rep.success
    assert _failed(rep) == {("expect_column_values_to_be_unique", "content_hash")}

    # wrong image size (the manifest is all 32 px; the suite expects 64)
    rep = run_quality_suite(manifest, image_size=64, attribute_values=allowed)
    assert _failed(rep) == {("expect_column_values_to_be_between", "height"),
                            ("expect_column_values_to_be_between", "width")}

    # single-image identity
    single = manifest.copy()
    single.loc[single["identity"] == 3, "identity_images"] = 1
    rep = run_quality_suite(single, image_size=SIZE, attribute_values=allowed)
    assert _failed(rep) == {("expect_column_values_to_be_between", "identity_images")}

    # unknown attribute value
    odd = manifest.copy()
    odd.loc[odd["identity"] == 4, "sex"] = "X"
    rep = run_quality_suite(odd, image_size=SIZE, attribute_values=allowed)
    assert _failed(rep) == {("expect_column_values_to_be_in_set", "sex")}
    assert "'X'" in next(r["observed"] for r in rep.results if not r["success"])

    # too few identities, and an attribute column named in attribute_values but absent
    rep = run_quality_suite(manifest, image_size=SIZE, min_identities=41,
                            attribute_values={**allowed, "age": ["1"]})
    assert _failed(rep) == {("expect_column_unique_value_count_to_be_between", "identity"),
                            ("expect_column_values_to_not_be_null", "age"),
                            ("expect_column_values_to_be_in_set", "age")}

    # no attribute_values: attribute columns only need to be non-null
    nulls = manifest.copy()
    nulls.loc[0, "sex"] = None
    rep = run_quality_suite(nulls, image_size=SIZE)
    assert _failed(rep) == {("expect_column_values_to_not_be_null", "sex")}

    # Data Docs, twice into the same folder (idempotent), second time with a failing manifest
    docs = tmp_path / "gx_docs"
    first = run_quality_suite(manifest, image_size=SIZE, attribute_values=allowed, docs_dir=docs)
    assert first.success and first.docs_index is not None
    assert first.docs_index.name == "index.html" and first.docs_index.is_file()
    assert docs in first.docs_index.parents
    second = run_quality_suite(dup, image_size=SIZE, docs_dir=docs)
    assert not second.success and second.docs_index == first.docs_index
    assert _failed(second) == {("expect_column_values_to_be_unique", "content_hash")}
