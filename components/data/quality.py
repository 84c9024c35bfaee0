"""Data-quality suite for the dataset manifest, run with Great Expectations 1.x.

great_expectations is imported lazily inside run_quality_suite (its import takes ~2 s).
Analytics are off: GX_ANALYTICS_ENABLED=false is set (if unset) before the import and the
context's ``analytics_enabled`` variable is set to False; GX's metric progress bars are off.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from components.data.schema import attribute_columns

SUITE_NAME = "privface_manifest_quality"
DATASOURCE_NAME = "privface_manifest"
ASSET_NAME = "manifest"
BATCH_NAME = "whole_manifest"


@dataclass
class QualityReport:
    success: bool
    results: list[dict]  # one per expectation: {"expectation", "column", "success", "observed"}
    docs_index: Path | None  # Data Docs index.html when docs_dir was given
    statistics: dict = field(default_factory=dict)

    def failed(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def problems(self) -> list[str]:
        """One line per failed expectation, in words first, then GX's own observation."""
        out = []
        for r in self.failed():
            plain = PLAIN.get((r["expectation"], r["column"]))
            if plain is None and r["expectation"] == "expect_column_values_to_be_in_set":
                plain = f"attribute {r['column']!r} has a value outside data.attribute_values"
            if plain is None and r["expectation"] == "expect_column_values_to_not_be_null":
                plain = f"attribute {r['column']!r} is missing for some images"
            out.append(f"{plain or r['expectation']} ({r['expectation']} on {r['column']}: {r['observed']})")
        return out

    def summary(self) -> str:
        lines = [f"quality suite: {'PASSED' if self.success else 'FAILED'} "
                 f"({sum(r['success'] for r in self.results)}/{len(self.results)} expectations met)"]
        for r in self.results:
            mark = "ok  " if r["success"] else "FAIL"
            lines.append(f"  {mark} {r['expectation']}({r['column']}): {r['observed']}")
        return "\n".join(lines)


# What a failed expectation means for the user, in words (the CLI prints these)
PLAIN = {
    ("expect_column_values_to_be_between", "height"): "images are not of the profile's size",
    ("expect_column_values_to_be_between", "width"): "images are not of the profile's size",
    ("expect_column_values_to_be_in_set", "channels"): "images are not RGB",
    ("expect_column_values_to_be_between", "identity_images"): "an identity has fewer than 2 images",
    ("expect_column_values_to_be_unique", "content_hash"): "the same image appears twice",
    ("expect_column_unique_value_count_to_be_between", "identity"): "too few identities",
}


def _expectations(manifest: pd.DataFrame, image_size: int, min_identities: int,
                  attribute_values: dict[str, list[str]] | None, notes: list[str] | None = None):
    import great_expectations.expectations as gxe

    exps = [
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=image_size, max_value=image_size),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=image_size, max_value=image_size),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[3]),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="pixel_max", column_B="pixel_min", or_equal=True),
        gxe.ExpectColumnValuesToBeBetween(column="identity_images", min_value=2),
        # notes render under the expectation in Data Docs: what ingestion kept once
        gxe.ExpectColumnValuesToBeUnique(column="content_hash", notes=list(notes) if notes else None),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="identity", min_value=min_identities),
        gxe.ExpectColumnValuesToNotBeNull(column="identity_name"),
    ]
    attrs = list(attribute_columns(manifest))
    for c in attribute_values or {}:
        if c not in attrs:
            attrs.append(c)  # a named attribute column missing from the manifest fails its expectation
    for c in attrs:
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=c))
        if attribute_values and c in attribute_values:
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=c, value_set=sorted(map(str, attribute_values[c]))))
    return exps


def _observed(res) -> str:
    r = res.result or {}
    exc = getattr(res, "exception_info", None) or {}
    # either {"raised_exception", "exception_message", ...} or {metric id: that dict}
    infos = [exc] + [v for v in exc.values() if isinstance(v, dict)] if isinstance(exc, dict) else []
    for info in infos:
        if info.get("raised_exception"):
            msg = str(info.get("exception_message") or "exception").strip() or "exception"
            return "error: " + msg.splitlines()[0][:200]
    if "observed_value" in r:
        return f"observed {r['observed_value']!r}"[:200]
    if "unexpected_count" in r:
        n, total = r.get("unexpected_count", 0), r.get("element_count", 0)
        if not n:
            return f"0 unexpected of {total}"
        examples = r.get("partial_unexpected_list") or []
        ex = ", ".join(repr(v) for v in examples[:5])
        return f"{n} unexpected of {total}, e.g. {ex}"[:200]
    return "no details"


def _column_of(cfg) -> str | None:
    kw = cfg.kwargs
    if "column" in kw:
        return kw["column"]
    if "column_A" in kw:
        return f"{kw['column_A']},{kw['column_B']}"
    return None


def run_quality_suite(manifest: pd.DataFrame, image_size: int, min_identities: int = 2,
                      attribute_values: dict[str, list[str]] | None = None,
                      docs_dir: str | Path | None = None, notes: list[str] | None = None) -> QualityReport:
    """Run the manifest expectation suite; never raises for failed expectations (see .success).

    Expectations: height/width == image_size, channels == 3, pixel_min/pixel_max in [0, 255]
    and pixel_max >= pixel_min, identity_images >= 2, content_hash unique, at least
    ``min_identities`` distinct identities, identity_name not null, and for every attribute
    column (undeclared manifest column, plus each key of ``attribute_values``) not null and,
    when ``attribute_values`` names it, values in the allowed set. ``notes`` (markdown
    lines, e.g. the duplicates that ingestion dropped) are shown under the uniqueness
    expectation in Data Docs.

    With ``docs_dir``, a file-backed GX project is created (or reused) with ``docs_dir`` as
    project root (GX files under ``docs_dir/gx``) and Data Docs are built; ``docs_index`` is
    the local site's index.html. Suite, datasource, validation definition and checkpoint
    are add-or-update'd under fixed names, so re-running into the same docs_dir works.
    Without ``docs_dir`` an ephemeral in-memory context is used and nothing is written."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if docs_dir is not None:
        docs_dir = Path(docs_dir)
        docs_dir.mkdir(parents=True, exist_ok=True)
        ctx = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    else:
        ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    ctx.variables.analytics_enabled = False
    if docs_dir is not None:
        ctx.variables.save()

    datasource = ctx.data_sources.add_or_update_pandas(name=DATASOURCE_NAME)
    try:
        asset = datasource.get_asset(ASSET_NAME)
    except LookupError:
        asset = datasource.add_dataframe_asset(name=ASSET_NAME)
    try:
        batch_def = asset.get_batch_definition(BATCH_NAME)
    except (KeyError, LookupError):
        batch_def = asset.add_batch_definition_whole_dataframe(BATCH_NAME)

    suite = gx.ExpectationSuite(
        name=SUITE_NAME, notes=list(notes) if notes else None,
        expectations=_expectations(manifest, int(image_size), int(min_identities), attribute_values, notes),
    )
    suite = ctx.suites.add_or_update(suite)
    vd = ctx.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch_def, suite=suite)
    )
    actions = [UpdateDataDocsAction(name="update_data_docs")] if docs_dir is not None else []
    checkpoint = ctx.checkpoints.add_or_update(
        gx.Checkpoint(name=SUITE_NAME, validation_definitions=[vd], actions=actions)
    )
    cp_result = checkpoint.run(batch_parameters={"dataframe": manifest})

    results: list[dict] = []
    stats: dict = {}
    position = {e.id: i for i, e in enumerate(suite.expectations)}
    for vr in cp_result.run_results.values():
        stats = dict(vr.statistics or {})
        # GX reports failing-to-compute expectations first; restore the suite's order
        ordered = sorted(vr.results, key=lambda r: position.get(r.expectation_config.id, len(position)))
        for res in ordered:
            cfg = res.expectation_config
            results.append({
                "expectation": cfg.type,
                "column": _column_of(cfg),
                "success": bool(res.success),
                "observed": _observed(res),
            })

    docs_index = None
    if docs_dir is not None:
        for site in ctx.get_docs_sites_urls():
            url = site.get("site_url") or ""
            if url.startswith("file://"):
                p = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
                if p.is_file():
                    docs_index = p
                    break
        if docs_index is None:
            cand = docs_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
            docs_index = cand if cand.is_file() else None

    success = bool(cp_result.success) and all(r["success"] for r in results)
    return QualityReport(success=success, results=results, docs_index=docs_index, statistics=stats)
