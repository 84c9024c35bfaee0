"""The privacy-utility report (metrics.json, report.html, figures, to MLflow too); the
promotion that follows it lives in promotion_assets.py."""


from pathlib import Path

import dagster as dg
import mlflow
import numpy as np

from components.metrics.utility import scalars
from components.reporting.figures import report_figures
from components.reporting.html import render_report
from components.reporting.metrics_file import build_metrics, summary_rows, write_json
from components.reporting.sweeps import with_operating_point
from pipelines.io_manager import ALL_PARTITIONS
from pipelines.refusals import require_one_dataset
from pipelines.resources import MLflowResource, PrivfaceSettings
from pipelines.tracking import report_artifacts


@dg.asset(group_name="report", kinds={"python", "mlflow"},
          ins={"protected_system": dg.AssetIn(metadata=ALL_PARTITIONS),
               "attack_results": dg.AssetIn(metadata=ALL_PARTITIONS),
               "defense_sweep": dg.AssetIn(metadata=ALL_PARTITIONS)},
          description="reports/metrics.json (DESIGN.md section 5), reports/report.html and figures.")
def privacy_utility_report(context: dg.AssetExecutionContext, settings: PrivfaceSettings,
                           mlflow_tracking: MLflowResource, protected_system: dict, attack_results: dict,
                           defense_sweep: dict, dataset_splits: dict, baseline_fr_model: dict, evaluation_fr_model: dict) -> dict:
    params = settings.params()
    wanted = list(params["defenses"])
    if "baseline" not in wanted:
        wanted.insert(0, "baseline")
    missing = [d for d in wanted if d not in protected_system or d not in attack_results]
    if missing:
        raise dg.Failure(f"no materialized protected_system/attack_results for {missing}: "
                         f"materialize those partitions first (privface run --defenses ...)")
    require_one_dataset(dataset_splits=dataset_splits, baseline_fr_model=baseline_fr_model,
                        evaluation_fr_model=evaluation_fr_model,
                        **{f"{asset}[{d}]": parts[d] for asset, parts in (
                            ("protected_system", protected_system), ("attack_results", attack_results),
                            ("defense_sweep", defense_sweep)) for d in wanted if d in parts})
    manifest = dataset_splits["manifest"]
    results = {d: {"params": protected_system[d]["operating_point"], "utility": protected_system[d]["utility"],
                   "threat_model": protected_system[d].get("threat_model", {}),
                   "attacks": attack_results[d]["attacks"], "mlflow": {
                       k: protected_system[d]["mlflow"][k] for k in ("run_id", "model_uri", "model_version")},
                   "not_applicable": attack_results[d]["not_applicable"],
                   "replicates": attack_results[d].get("replicates", {}),
                   "bootstrap": attack_results[d].get("bootstrap"),
                   "measures": protected_system[d].get("measures", {}),
                   "sweep": defense_sweep.get(d, {})} for d in wanted}
    for r in results.values():   # the operating point is a point of its own sweep when nothing else differs
        r["sweep"] = with_operating_point(r["sweep"], r)
    info = dataset_splits["info"].iloc[0]
    dataset = {"name": str(info["name"]), "version": str(info["version"]),
               "identities": int(manifest["identity"].nunique()), "images": int(len(manifest))}
    metrics = build_metrics(dataset, results)
    reports = settings.reports_dir()
    attack_artifacts = {d: attack_results[d].get("artifacts", {}) for d in wanted}
    defense_artifacts = {d: protected_system[d].get("artifacts", {}) for d in wanted}
    figures = report_figures(
        metrics, reports, labels=dataset_splits["pairs"]["label"].to_numpy(),
        pair_scores={d: np.asarray(protected_system[d]["pair_scores"]) for d in wanted},
        histories={"baseline": baseline_fr_model["history"], "evaluation": evaluation_fr_model["history"]},
        sweeps={d: results[d]["sweep"] for d in wanted if d in defense_sweep},
        attack_artifacts=attack_artifacts, defense_artifacts=defense_artifacts)
    strength = {d: attack_results[d].get("strength", {}) for d in wanted}
    metrics_path = write_json(metrics, reports / "metrics.json")
    html_path = render_report(metrics, figures, reports / "report.html", profile=params["profile"],
                              strength=strength)
    with mlflow_tracking.run(context, "privacy_utility_report"):
        for name, d in metrics["defenses"].items():
            mlflow.log_metrics({f"{name}.{block}.{k}": v for block in ("utility", "scores")
                                for k, v in scalars(d[block]).items()})
        drawn = {p for section in figures.values() for p in section.values()
                 if Path(p).resolve().parent == reports.resolve()}   # the report's own figures
        for path, folder in report_artifacts([metrics_path, html_path, *sorted(drawn)], attack_artifacts,
                                             defense_artifacts):
            mlflow.log_artifact(path, artifact_path=folder)
    context.add_output_metadata({
        "metrics_json": str(metrics_path),
        "report_html": str(html_path),
        "summary": dg.MetadataValue.md(_markdown(summary_rows(metrics))),
    })
    return metrics


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
