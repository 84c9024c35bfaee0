"""Promotion in the MLflow registry, in two steps with the blocking `promotion_gate` check
between them (pipelines/checks.py):

1. `promotion_candidates` judges each defense's registered version by the gate
   (components/reporting/promotion.py) against the champion as the registry records it,
   tags the version with its measured scores and the reasons, and gives failing versions
   the `challenger` alias.
2. `registered_model` moves `champion` to the passing versions, and only there: it runs
   only when the check passed, so a run that fails anywhere before it leaves every champion
   alias as it was. The scores tagged on the champion version are what the next run must beat."""

import dagster as dg
from mlflow.exceptions import MlflowException

from components.reporting.promotion import CHALLENGER, CHAMPION, gate_verdict
from components.reporting.model_card import model_card
from pipelines.metadata import meta_json
from pipelines.resources import MLflowResource, PrivfaceSettings, code_version

SCORE_TAGS = ("utility", "privacy", "overall")
UNMEASURED = "n/a"
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")   # no such model, or no such alias


def _tag_value(value) -> str:
    return UNMEASURED if value is None else f"{float(value):.6f}"


def _tag_float(tags: dict, key: str) -> float | None:
    value = tags.get(key)
    return None if value in (None, "", UNMEASURED) else float(value)


def recorded_champion(client, registered: str) -> dict | None:
    """The champion version and the scores tagged on it, read from the registry (None when
    the model has no champion)."""
    try:
        mv = client.get_model_version_by_alias(registered, CHAMPION)
    except MlflowException as err:
        if err.error_code in NOT_FOUND:
            return None
        raise
    return {"version": str(mv.version), **{k: _tag_float(mv.tags, k) for k in SCORE_TAGS}}


@dg.asset(group_name="report", kinds={"mlflow"},
          description="The promotion gate's verdict per defense (utility floor, privacy floor, better than "
                      "the registry's champion); versions are tagged with their scores and the reasons, "
                      "failing ones get the `challenger` alias.")
def promotion_candidates(context: dg.AssetExecutionContext, settings: PrivfaceSettings,
                         mlflow_tracking: MLflowResource, privacy_utility_report: dict) -> dict:
    params = settings.params()
    floors = params["gates"]
    client = mlflow_tracking.client()
    verdicts = {}
    for name, d in privacy_utility_report["defenses"].items():
        registered = settings.registered_model(name)
        version = str(d["mlflow"]["model_version"])
        scores = {k: d["scores"].get(k) for k in SCORE_TAGS}
        champion = recorded_champion(client, registered)
        verdict = gate_verdict(scores, floors["utility_floor"], floors["privacy_floor"],
                               champion=champion, version=version)
        tags = {**{k: _tag_value(v) for k, v in scores.items()},
                "verification_accuracy": _tag_value(d["utility"]["verification_accuracy"]),
                "gate": "passed" if verdict.passed else "failed",
                "gate_reason": "; ".join(verdict.reasons),
                "gate_dagster_run_id": context.run_id}
        for key, value in tags.items():
            client.set_model_version_tag(registered, version, key, value)
        data_version = str(privacy_utility_report.get("dataset", {}).get("version", "unknown"))
        card = model_card(name, d.get("threat_model", {}), d["utility"], data_version=data_version,
                          code_version=code_version(), data_digest=settings.data_digest(data_version),
                          scores=d["scores"], gate=verdict.to_dict())
        client.update_model_version(registered, version, description=card)
        if not verdict.passed:
            client.set_registered_model_alias(registered, CHALLENGER, version)
        verdicts[name] = {"registered_model": registered, "version": version, "scores": scores,
                          "champion": champion, **verdict.to_dict()}
        context.log.info(f"{registered} v{version}: {'passed' if verdict.passed else 'failed'}: "
                         f"{tags['gate_reason']}")
    context.add_output_metadata({"passed": dg.MetadataValue.json(
        {name: v["passed"] for name, v in verdicts.items()})})
    return verdicts


@dg.asset(group_name="report", kinds={"mlflow"},
          description="Each defense's `champion` alias, moved to its new version only when that version "
                      "passed the promotion gate; the previous champion is recorded on the version.")
def registered_model(context: dg.AssetExecutionContext, mlflow_tracking: MLflowResource,
                     promotion_candidates: dict) -> dict:
    client = mlflow_tracking.client()
    decisions = {}
    for name, v in promotion_candidates.items():
        registered, version = v["registered_model"], v["version"]
        previous = (v["champion"] or {}).get("version")
        if v["passed"]:
            client.set_registered_model_alias(registered, CHAMPION, version)
            if previous != version:
                client.set_model_version_tag(registered, version, "previous_champion", previous or "none")
            if str(mlflow_tracking.alias_version(registered, CHALLENGER)) == version:
                client.delete_registered_model_alias(registered, CHALLENGER)   # refused once, promoted now
        held = mlflow_tracking.alias_version(registered, CHAMPION)
        decisions[name] = {"registered_model": registered, "version": version, "alias": v["alias"],
                           "passed": v["passed"], "reasons": v["reasons"], "previous_champion": previous,
                           "champion_version": None if held is None else str(held)}
    context.add_output_metadata({"decisions": meta_json(decisions)})
    return decisions
