"""pandera schema of the dataset manifest (one row per image, see ingest.load_image_folder).

Columns not declared here are attribute columns (from attributes.csv): they are allowed
(``strict=False``) and must hold non-null, non-empty strings.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import pandera.pandas as pa
from pandera.typing.pandas import Series

from components.data.errors import DataError

SPLITS = ("train", "holdout", "val", "test", "public")   # holdout: held-out photos of train identities

# Columns the loader produces (attribute columns may not reuse these names), and all
# declared columns: everything else in a manifest is an attribute column.
BASE_COLUMNS = (
    "index", "path", "identity", "identity_name", "content_hash", "file_hash",
    "height", "width", "channels", "pixel_min", "pixel_max", "identity_images",
)
KNOWN_COLUMNS = frozenset(BASE_COLUMNS) | {"split"}

_HEX64 = r"^[0-9a-f]{64}$"
ATTRIBUTE_CHECK = "attribute column values must be non-null, non-empty strings"


class ManifestSchema(pa.DataFrameModel):
    index: Series[int] = pa.Field(ge=0, unique=True)
    path: Series[str] = pa.Field(str_length={"min_value": 1})
    identity: Series[int] = pa.Field(ge=0)
    identity_name: Series[str] = pa.Field(str_length={"min_value": 1})
    content_hash: Series[str] = pa.Field(str_matches=_HEX64)
    file_hash: Optional[Series[str]] = pa.Field(str_matches=_HEX64)
    height: Series[int] = pa.Field(gt=0)
    width: Series[int] = pa.Field(gt=0)
    channels: Series[int] = pa.Field(eq=3)
    pixel_min: Series[int] = pa.Field(ge=0, le=255)
    pixel_max: Series[int] = pa.Field(ge=0, le=255)
    identity_images: Series[int] = pa.Field(ge=2)
    split: Optional[Series[str]] = pa.Field(isin=list(SPLITS))

    class Config:
        strict = False
        coerce = False
        name = "ManifestSchema"

    @pa.dataframe_check(error="height == width")
    def square_images(cls, df: pd.DataFrame) -> pd.Series:
        return df["height"] == df["width"]

    @pa.dataframe_check(error="pixel_min <= pixel_max")
    def pixel_range_ordered(cls, df: pd.DataFrame) -> pd.Series:
        return df["pixel_min"] <= df["pixel_max"]

    @pa.dataframe_check(error="each identity maps to exactly one identity_name (and vice versa)")
    def identity_name_one_to_one(cls, df: pd.DataFrame) -> pd.Series:
        names_per_id = df.groupby("identity")["identity_name"].transform("nunique")
        ids_per_name = df.groupby("identity_name")["identity"].transform("nunique")
        return (names_per_id == 1) & (ids_per_name == 1)

    @pa.dataframe_check(error=ATTRIBUTE_CHECK)
    def attribute_columns_are_strings(cls, df: pd.DataFrame) -> pd.Series:
        ok = pd.Series(True, index=df.index)
        for c in df.columns:
            if c not in KNOWN_COLUMNS:
                ok &= df[c].map(_nonempty_str).astype(bool)
        return ok


def _nonempty_str(v) -> bool:
    return isinstance(v, str) and v != ""


def attribute_columns(df: pd.DataFrame) -> list[str]:
    """The manifest's attribute columns (those not declared by ManifestSchema), in order."""
    return [c for c in df.columns if c not in KNOWN_COLUMNS]


def _summarise(err: pa.errors.SchemaErrors, max_lines: int = 20) -> str:
    """One readable line per failed check: column, check, a few failing values and rows."""
    fc = err.failure_cases.astype({"column": object, "check": object}).fillna({"column": "", "check": ""})
    lines = []

    def rows_text(g) -> str:
        rows = sorted({int(i) for i in g["index"].dropna().tolist()})
        txt = ", ".join(map(str, rows[:8])) + (f" (+{len(rows) - 8} more)" if len(rows) > 8 else "")
        return f" on rows [{txt}]" if rows else ""

    for check, g in fc[fc["schema_context"] == "DataFrameSchema"].groupby("check", sort=False):
        if check == "column_in_dataframe":
            lines.append("missing column(s) " + ", ".join(repr(str(v)) for v in g["failure_case"]))
        elif g["index"].notna().any():  # row-level dataframe check: pandera lists each cell of a bad row
            lines.append(f"check '{check}' failed{rows_text(g)}")
        else:
            lines.append(f"check '{check}' failed: {g['failure_case'].iloc[0]}")
    for (column, check), g in fc[fc["schema_context"] != "DataFrameSchema"].groupby(["column", "check"], sort=False):
        if check.startswith("dtype("):
            lines.append(f"column {column!r} has dtype {g['failure_case'].iloc[0]}, expected {check[6:-1]}")
            continue
        vals = [repr(v) for v in g["failure_case"].tolist()[:5]]
        more = f" (+{len(g) - 5} more)" if len(g) > 5 else ""
        lines.append(f"column {column!r} failed {check}: {', '.join(vals)}{more}{rows_text(g)}")
    if not lines:  # pragma: no cover - unexpected shape; fall back to pandera's own text
        return str(err)
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... and {len(lines) - max_lines} more failures"]
    return "schema validation failed:\n  " + "\n  ".join(lines)


def manifest_schema(df: pd.DataFrame) -> pa.DataFrameSchema:
    """ManifestSchema plus an explicit non-null, non-empty str column for each attribute column of
    ``df`` (so failures name the attribute column)."""
    schema = ManifestSchema.to_schema()
    attrs = attribute_columns(df)
    if attrs:
        schema = schema.add_columns(
            {
                c: pa.Column(
                    None,  # any dtype (str or object); the check demands str values
                    checks=pa.Check(lambda s: s.map(_nonempty_str).astype(bool), error="non-empty string"),
                    nullable=False,
                    coerce=False,
                )
                for c in attrs
            }
        )
        schema.checks = [c for c in schema.checks if getattr(c, "error", None) != ATTRIBUTE_CHECK]
    return schema


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Validate against ManifestSchema (lazily, all failures collected); returns the validated frame.

    Raises DataError("manifest", <readable summary of every failed check>)."""
    if not isinstance(df, pd.DataFrame):
        raise DataError("manifest", f"expected a pandas DataFrame, got {type(df).__name__}")
    try:
        return manifest_schema(df).validate(df, lazy=True)
    except pa.errors.SchemaErrors as e:
        raise DataError("manifest", _summarise(e)) from e
