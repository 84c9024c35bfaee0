"""Data assets: the face dataset (generated if it is the embedded synthetic set and
missing) and its identity-disjoint splits with verification pairs.

A dataset is published only once its blocking checks pass: the checks run inside the
asset on the value in memory, and the asset refuses (raises) before its output reaches
the IO manager, so a refused dataset never replaces the stored one. Great Expectations
writes its Data Docs into a staging folder that replaces the published ones only on
success; a refused set's Data Docs stay in staging, and the refusal names that folder."""

import contextlib
import shutil
import tempfile

import dagster as dg
import pandas as pd

from components.atomic import atomic_write_dir
from components.data.errors import DataError
from components.data.ingest import FaceDataset, load_image_folder
from components.data.quality import run_quality_suite
from components.data.schema import validate_manifest
from components.data.splits import assign_splits, check_disjoint, make_pairs
from components.data.synthetic import SyntheticConfig, write_dataset
from pipelines.refusals import refusal, refuse_bad_input
from pipelines.resources import PrivfaceSettings, dvc_data_md5

DATASET_CHECKS = [
    dg.AssetCheckSpec("manifest_schema", asset="face_dataset", blocking=True,
                      description="The manifest satisfies the pandera ManifestSchema."),
    dg.AssetCheckSpec("data_quality", asset="face_dataset", blocking=True,
                      description="Great Expectations data-quality suite (shape, range, images per identity, "
                                  "duplicates, identity count, attribute values); Data Docs under reports/."),
]
SPLIT_CHECKS = [dg.AssetCheckSpec("splits_disjoint", asset="dataset_splits", blocking=True,
                                  description="No identity and no image content in two splits.")]
LISTED = 50   # duplicates and ignored files listed in the asset metadata (Data Docs list them all)


def ensure_synthetic(params: dict, settings: PrivfaceSettings, log=None) -> None:
    """Write the embedded synthetic dataset if the profile uses it and it is missing."""
    data = params["data"]
    root = settings.path(data["dir"])
    if data["source"] == "synthetic" and not (root.exists() and any(root.iterdir())):
        if log:
            log.info(f"generating the synthetic dataset into {root}")
        write_dataset(root, SyntheticConfig(**data["synthetic"]), progress=settings.progress)


def duplicate_notes(ds: FaceDataset) -> list[str]:
    """Markdown lines for Data Docs: what ingestion kept once and what it skipped."""
    notes = []
    if ds.duplicates:
        notes.append(f"**{len(ds.duplicates)} exact duplicate(s) within an identity were kept once** "
                     "(the later copy dropped at ingestion):")
        notes += [f"- `{d['dropped']}` = `{d['kept']}`" for d in ds.duplicates]   # every one
    if ds.ignored:
        notes.append(f"{len(ds.ignored)} operating-system file(s) skipped: " + ", ".join(f"`{p}`" for p in ds.ignored))
    return notes


def splits_and_pairs(ds: FaceDataset, data: dict):
    """(manifest with its split column, verification pairs), or a refusal saying why the
    dataset cannot be split (too few identities for a split, too few for the pair folds)."""
    with refuse_bad_input():
        try:
            manifest = assign_splits(ds.manifest, data["splits"], seed=data["split_seed"],
                                     holdout_per_identity=data["holdout_per_identity"])
            pairs = make_pairs(manifest, split="test", n_folds=data["pairs"]["folds"],
                               pairs_per_fold=data["pairs"]["pairs_per_fold"], seed=data["pairs"]["seed"])
        except DataError:
            raise
        except ValueError as err:
            raise refusal(f"the dataset cannot be split: {err}",
                          "use a dataset with more identities, or change data.splits / data.pairs in params.yaml",
                          file=data["dir"]) from err
    return manifest, pairs


def _markdown_duplicates(ds: FaceDataset) -> str:
    rows = ["| identity | kept | dropped (same photo) |", "|---|---|---|"]
    rows += [f"| {d['identity_name']} | {d['kept']} | {d['dropped']} |" for d in ds.duplicates[:LISTED]]
    return "\n".join(rows) if ds.duplicates else "none"


@dg.asset(group_name="data", kinds={"python", "pandas"}, check_specs=DATASET_CHECKS,
          description="The face dataset, ingested into the canonical RGB uint8 store with its manifest; "
                      "published only when its blocking checks pass.")
def face_dataset(context: dg.AssetExecutionContext, settings: PrivfaceSettings):
    with refuse_bad_input():
        params = settings.params()
        ensure_synthetic(params, settings, context.log)
        data = params["data"]
        ds = load_image_folder(settings.path(data["dir"]), size=data["image_size"], name=data["name"],
                               progress=settings.progress)
    try:
        validate_manifest(ds.manifest)
        schema_error = ""
    except DataError as err:
        schema_error = str(err)
    yield dg.AssetCheckResult(check_name="manifest_schema", passed=not schema_error,
                              metadata={"rows": len(ds.manifest), "error": schema_error or "none"})

    published = settings.reports_dir() / "gx"
    staging = settings.workdir() / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    docs = tempfile.mkdtemp(prefix=f"gx-{context.run_id[:8]}-", dir=staging)
    report = run_quality_suite(ds.manifest, image_size=data["image_size"], min_identities=data["min_identities"],
                               attribute_values=data.get("attribute_values"), docs_dir=docs,
                               notes=duplicate_notes(ds))
    problems = report.problems()
    yield dg.AssetCheckResult(check_name="data_quality", passed=report.success, metadata={
        "expectations": len(report.results), "failed": dg.MetadataValue.json(report.failed()),
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        "duplicates_kept_once": len(ds.duplicates),
        "data_docs": str(report.docs_index) if report.docs_index else "none"})

    if not schema_error and report.success:
        splits_and_pairs(ds, data)   # a set that cannot be split is refused here, before it is stored
    if schema_error or not report.success:
        what = "; ".join(([schema_error] if schema_error else []) + problems)
        raise refusal(f"the dataset was refused by its checks: {what}",
                      f"fix the data (Data Docs of the refused set: {report.docs_index}); "
                      "the stored dataset and everything built on it are unchanged",
                      file=str(settings.path(data["dir"])))
    # publish the Data Docs of the accepted set (whole folder swapped in, never half-written)
    atomic_write_dir(published, lambda tmp: shutil.copytree(docs, tmp, dirs_exist_ok=True))
    shutil.rmtree(docs, ignore_errors=True)
    with contextlib.suppress(OSError):
        staging.rmdir()   # only if no refused set's Data Docs wait there
    # Dagster's data version of the dataset: the DVC md5 where DVC tracks it, else its content version
    yield dg.Output(ds, data_version=dg.DataVersion(settings.data_digest(ds.version)), metadata={
        "identities": int(ds.manifest["identity"].nunique()),
        "images": len(ds.manifest),
        "image_size": int(data["image_size"]),
        "version": ds.version,
        "dvc_data_md5": dvc_data_md5(),
        "source": str(settings.path(data["dir"])),
        "duplicates_kept_once": len(ds.duplicates),
        "duplicates": dg.MetadataValue.md(_markdown_duplicates(ds)),
        "duplicate_pairs": dg.MetadataValue.json(ds.duplicates[:LISTED]),
        "ignored_files": dg.MetadataValue.json(ds.ignored[:LISTED]),
        "data_docs": str(published / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"),
        "preview": dg.MetadataValue.md(ds.manifest.head(8).to_markdown(index=False)),
    })


@dg.asset(group_name="data", kinds={"python", "pandas"}, check_specs=SPLIT_CHECKS,
          description="Identity-disjoint train/test/public splits, held-out photos of the train identities "
                      "(split `holdout`, trained on by no model) and LFW-style verification pairs in 10 folds.")
def dataset_splits(context: dg.AssetExecutionContext, settings: PrivfaceSettings, face_dataset: FaceDataset):
    data = settings.params()["data"]
    manifest, pairs = splits_and_pairs(face_dataset, data)
    problems = check_disjoint(manifest)
    yield dg.AssetCheckResult(check_name="splits_disjoint", passed=not problems,
                              metadata={"problems": dg.MetadataValue.json(problems[:20]), "count": len(problems)})
    if problems:
        raise refusal(f"splits share identities or images: {problems[:3]}", "report this as a bug")
    counts = manifest.groupby("split")["identity"].nunique().to_dict()
    info = pd.DataFrame([{"name": face_dataset.name, "version": face_dataset.version}])
    yield dg.Output({"manifest": manifest, "pairs": pairs, "info": info}, metadata={
        **{f"identities_{k}": int(v) for k, v in counts.items()},
        "holdout_photos": int((manifest["split"] == "holdout").sum()),
        "pairs": len(pairs),
        "genuine_pairs": int(pairs["label"].sum()),
        "folds": int(pairs["fold"].nunique()),
        "data_version": face_dataset.version,
    })
