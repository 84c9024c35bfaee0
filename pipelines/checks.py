"""Asset checks: model sanity (finite weights, embeddings not collapsed) and the promotion
gate. The blocking data checks (pandera schema, Great Expectations suite, split
disjointness) are declared on their assets (assets/data_assets.py) and run before the
value is stored, so that a refused dataset never replaces the published one."""


import dagster as dg
import torch

from components.data.ingest import FaceDataset
from components.metrics.utility import embedding_spread, split_templates
from components.models.fr_model import from_bundle
from pipelines.resources import PrivfaceSettings


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


ALL_CHECKS = [baseline_model_sane, evaluation_model_sane, promotion_gate]
