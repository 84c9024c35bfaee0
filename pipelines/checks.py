"""Asset checks: blocking data checks (pandera schema, Great Expectations suite, split
disjointness), model sanity (finite weights, embeddings not collapsed) and the promotion gate."""


import dagster as dg
import torch

from components.atomic import path_lock
from components.data.errors import DataError
from components.data.ingest import FaceDataset
from components.data.quality import run_quality_suite
from components.data.schema import validate_manifest
from components.data.splits import check_disjoint
from components.metrics.utility import embedding_spread, split_templates
from components.models.fr_model import from_bundle
from pipelines.resources import PrivfaceSettings


@dg.asset_check(asset="face_dataset", blocking=True,
                description="The manifest satisfies the pandera ManifestSchema.")
def manifest_schema(face_dataset: FaceDataset) -> dg.AssetCheckResult:
    try:
        validate_manifest(face_dataset.manifest)
    except DataError as err:
        return dg.AssetCheckResult(passed=False, metadata={"error": dg.MetadataValue.text(str(err))})
    return dg.AssetCheckResult(passed=True, metadata={"rows": len(face_dataset.manifest)})


@dg.asset_check(asset="face_dataset", blocking=True,
                description="Great Expectations data-quality suite (shape, range, images per identity, "
                            "duplicates, identity count, attribute values); Data Docs under reports/.")
def data_quality(settings: PrivfaceSettings, face_dataset: FaceDataset) -> dg.AssetCheckResult:
    params = settings.params()
    data = params["data"]
    docs = settings.reports_dir() / "gx"
    with path_lock(docs):   # one GX project per reports dir: two runs writing it at once clash
        report = run_quality_suite(face_dataset.manifest, image_size=data["image_size"],
                                   min_identities=data["min_identities"],
                                   attribute_values=data.get("attribute_values"), docs_dir=docs)
    failed = [r for r in report.results if not r["success"]]
    return dg.AssetCheckResult(
        passed=report.success,
        metadata={"expectations": len(report.results), "failed": dg.MetadataValue.json(failed),
                  "data_docs": str(report.docs_index) if report.docs_index else "none"})


@dg.asset_check(asset="dataset_splits", blocking=True,
                description="No identity and no image content in two splits.")
def splits_disjoint(dataset_splits: dict) -> dg.AssetCheckResult:
    problems = check_disjoint(dataset_splits["manifest"])
    return dg.AssetCheckResult(passed=not problems,
                               metadata={"problems": dg.MetadataValue.json(problems[:20]),
                                         "count": len(problems)})


def _model_sanity(settings: PrivfaceSettings, bundle: dict, face_dataset: FaceDataset,
                  dataset_splits: dict) -> dg.AssetCheckResult:
    model = from_bundle(bundle)
    bad = [k for k, v in {**bundle["backbone"], **bundle["head"]}.items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    templates = split_templates(lambda x: model.backbone(x), face_dataset.images,
                                dataset_splits["manifest"], "test")
    spread = embedding_spread(templates)
    floor = settings.params()["model_checks"]["min_embedding_std"]
    return dg.AssetCheckResult(passed=not bad and spread >= floor,
                               metadata={"non_finite_tensors": dg.MetadataValue.json(bad[:10]),
                                         "embedding_std": float(spread), "min_embedding_std": floor})


@dg.asset_check(asset="baseline_fr_model", blocking=True, additional_ins={
    "face_dataset": dg.AssetIn(), "dataset_splits": dg.AssetIn()},
    description="Weights finite; test embeddings not collapsed.")
def baseline_model_sane(settings: PrivfaceSettings, baseline_fr_model: dict, face_dataset: FaceDataset,
                        dataset_splits: dict) -> dg.AssetCheckResult:
    return _model_sanity(settings, baseline_fr_model, face_dataset, dataset_splits)


@dg.asset_check(asset="evaluation_fr_model", blocking=True, additional_ins={
    "face_dataset": dg.AssetIn(), "dataset_splits": dg.AssetIn()},
    description="Weights finite; test embeddings not collapsed.")
def evaluation_model_sane(settings: PrivfaceSettings, evaluation_fr_model: dict, face_dataset: FaceDataset,
                          dataset_splits: dict) -> dg.AssetCheckResult:
    return _model_sanity(settings, evaluation_fr_model, face_dataset, dataset_splits)


@dg.asset_check(asset="promotion_candidates", blocking=True,
                description="The promotion gate's verdict per defense, with the numbers; fails (and so "
                            "stops the champion from moving) when no candidate passes.")
def promotion_gate(promotion_candidates: dict) -> dg.AssetCheckResult:
    def line(v: dict) -> str:
        return f"{'passed' if v['passed'] else 'failed'}, {v['alias']} v{v['version']}: " + "; ".join(v["reasons"])

    return dg.AssetCheckResult(
        passed=any(v["passed"] for v in promotion_candidates.values()),
        metadata={"passing": dg.MetadataValue.json(sorted(n for n, v in promotion_candidates.items() if v["passed"])),
                  **{name: dg.MetadataValue.text(line(v)) for name, v in promotion_candidates.items()}})


ALL_CHECKS = [manifest_schema, data_quality, splits_disjoint, baseline_model_sane, evaluation_model_sane,
              promotion_gate]
