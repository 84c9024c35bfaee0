"""The privacy-utility report (metrics.json, report.html, figures, to MLflow too) and
the promotion of registered models that pass the gate to the `champion` alias."""


import dagster as dg
import mlflow
import numpy as np

from components.metrics.plots import roc_plot
from components.reporting.figures import sweep_plot, tradeoff_plot, training_curves
from components.reporting.html import render_report
from components.reporting.metrics_file import build_metrics, summary_rows, write_json
from pipelines.io_manager import ALL_PARTITIONS
from pipelines.resources import MLflowResource, PrivfaceSettings


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
    manifest = dataset_splits["manifest"]
    results = {d: {"params": protected_system[d]["operating_point"], "utility": protected_system[d]["utility"],
                   "attacks": attack_results[d]["attacks"], "mlflow": {
                       k: protected_system[d]["mlflow"][k] for k in ("run_id", "model_uri", "model_version")},
                   "not_applicable": attack_results[d]["not_applicable"],
                   "measures": protected_system[d].get("measures", {}),
                   "sweep": defense_sweep.get(d, {})} for d in wanted}
    info = dataset_splits["info"].iloc[0]
    dataset = {"name": str(info["name"]), "version": str(info["version"]),
               "identities": int(manifest["identity"].nunique()), "images": int(len(manifest))}
    metrics = build_metrics(dataset, results)
    reports = settings.reports_dir()
    labels = dataset_splits["pairs"]["label"].to_numpy()
    figures = {
        "ROC on the test pairs (FAR on a log axis)": roc_plot(
            {d: (np.asarray(protected_system[d]["pair_scores"]), labels) for d in wanted},
            reports / "roc.png", title="Verification ROC per defense"),
        "Training curves": training_curves({"baseline": baseline_fr_model["history"],
                                            "evaluation": evaluation_fr_model["history"]},
                                           reports / "training.png"),
        "Privacy-utility trade-off": tradeoff_plot({d: m["scores"] for d, m in metrics["defenses"].items()},
                                                   reports / "tradeoff.png"),
    }
    if any(defense_sweep.get(d, {}).get("points") for d in wanted):
        figures["Sweeps: utility against the privacy measure each defense targets"] = sweep_plot(
            {d: defense_sweep[d] for d in wanted if d in defense_sweep}, reports / "sweeps.png")
    for d in wanted:   # pictures a defense drew while building (e.g. FaceMAE's masked/reconstructed grid)
        for label, path in protected_system[d].get("artifacts", {}).items():
            figures[f"{d}: {label}"] = path
    for d in wanted:   # reconstruction grids (public identities only) and attack ROCs
        for attack, files in attack_results[d].get("artifacts", {}).items():
            for label, path in files.items():
                figures[f"{d}: {attack} ({label})"] = path
    strength = {d: attack_results[d].get("strength", {}) for d in wanted}
    metrics_path = write_json(metrics, reports / "metrics.json")
    html_path = render_report(metrics, figures, reports / "report.html", profile=params["profile"],
                              strength=strength)
    with mlflow_tracking.run(context, "privacy_utility_report"):
        for name, d in metrics["defenses"].items():
            mlflow.log_metrics({f"{name}.{block}.{k}": v for block in ("utility", "scores")
                                for k, v in d[block].items()})
        for path in [metrics_path, html_path, *figures.values()]:
            mlflow.log_artifact(str(path), artifact_path="report")
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


@dg.asset(group_name="report", kinds={"mlflow"},
          description="Promotion: each defense's registered version becomes `champion` only when it "
                      "passes the gate in params.yaml; otherwise it is tagged `challenger` with the reason.")
def registered_model(context: dg.AssetExecutionContext, settings: PrivfaceSettings,
                     mlflow_tracking: MLflowResource, privacy_utility_report: dict) -> dict:
    params = settings.params()
    gates = params["gates"]
    client = mlflow_tracking.client()
    decisions = {}
    for name, d in privacy_utility_report["defenses"].items():
        registered = f"{params['mlflow']['registered_model_prefix']}-{name}"
        version = d["mlflow"]["model_version"]
        accuracy = d["utility"]["verification_accuracy"]
        passed = accuracy >= gates["utility_floor"]
        reason = (f"verification accuracy {accuracy:.4f} {'>=' if passed else '<'} "
                  f"utility floor {gates['utility_floor']}")
        alias = "champion" if passed else "challenger"
        client.set_registered_model_alias(registered, alias, version)
        client.set_model_version_tag(registered, version, "gate", "passed" if passed else "failed")
        client.set_model_version_tag(registered, version, "gate_reason", reason)
        client.set_model_version_tag(registered, version, "verification_accuracy", f"{accuracy:.4f}")
        decisions[name] = {"registered_model": registered, "version": version, "alias": alias,
                           "passed": passed, "reason": reason,
                           "champion_version": mlflow_tracking.alias_version(registered, "champion")}
    context.add_output_metadata({"decisions": dg.MetadataValue.json(decisions)})
    return decisions
