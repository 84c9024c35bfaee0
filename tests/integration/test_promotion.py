"""Promotion through the real assets and the blocking check, materialized by Dagster, on a
real sqlite MLflow registry with real model versions: a better model is promoted, a worse
one is not, and a run that fails before promotion leaves the champion where it was.

Each run gets a fresh ephemeral Dagster instance, so the only memory of the last champion
is the registry itself (its alias and the scores tagged on its version)."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from components.reporting.metrics_file import build_metrics
from pipelines.assets.promotion_assets import promotion_candidates, registered_model
from pipelines.checks import promotion_gate
from pipelines.cli import _gate_refusal
from pipelines.definitions import build_resources
from tests.integration.conftest import registered

pytestmark = pytest.mark.integration

FLOORS = {"utility_floor": 0.85, "privacy_floor": 0.2}
DATASET = {"name": "t", "version": "v", "identities": 4, "images": 16}


@pytest.fixture()
def resources(tmp_path, mlflow_uri) -> dict:
    return build_resources(profile="ci", workdir=str(tmp_path / "work"), reports_dir=str(tmp_path / "reports"),
                           mlflow_uri=mlflow_uri, progress=False, overrides=json.dumps({"gates": FLOORS}))


@pytest.fixture()
def client(resources):
    return resources["mlflow_tracking"].client()


def new_version(resources, tmp_path, defense: str, weights: str) -> str:
    """A real registered version of the defense's registered model: an MLflow run holding a model
    artifact, registered the way protected_system registers (keyed by content hash)."""
    tracking = resources["mlflow_tracking"]
    client = tracking.client()
    run = client.create_run(client.get_experiment_by_name(tracking.experiment).experiment_id)
    model = tmp_path / f"{defense}-{weights}"
    model.mkdir()
    (model / "weights.txt").write_text(weights)
    client.log_artifacts(run.info.run_id, str(model), "model")
    client.set_terminated(run.info.run_id)
    return str(tracking.register(registered(defense), f"runs:/{run.info.run_id}/model", run.info.run_id,
                                 content_hash=weights, tags={"defense": defense}))


def report(**defenses) -> dict:
    """metrics.json as privacy_utility_report returns it; each defense given as
    (version, verification accuracy, model-inversion top-1 or None for no attack measured),
    so that privacy = 1 - top-1 and utility = accuracy / the baseline's."""
    results = {}
    for name, (version, acc, top1) in defenses.items():
        utility = {"verification_accuracy": acc, "verification_std": 0.01, "tar_at_far_1e-3": 0.5, "eer": 0.1,
                   "rank1": 0.8}
        attacks = {} if top1 is None else {"model_inversion": {"top1": top1, "top5": top1, "knn_dist": 1.0,
                                                               "chance": 0.0, "advantage": top1}}
        results[name] = {"params": {}, "utility": utility, "attacks": attacks,
                         "mlflow": {"run_id": "", "model_uri": "", "model_version": version}}
    return build_metrics(DATASET, results)


def promote(resources, metrics: dict | None):
    """Materialize the report (supplied; None: it raises), the promotion assets and the gate."""
    @dg.asset(name="privacy_utility_report", group_name="report")
    def supplied_report() -> dict:
        if metrics is None:
            raise RuntimeError("the report failed")
        return metrics

    return dg.materialize([supplied_report, promotion_candidates, promotion_gate, registered_model],
                          resources=resources, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def champion(client, defense="baseline"):
    return client.get_model_version_by_alias(registered(defense), "champion")


def gate_of(result):
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    return evaluation


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_first_version_becomes_champion_with_its_scores_on_the_registry(resources, client, tmp_path):
    v1 = new_version(resources, tmp_path, "baseline", "w1")
    result = promote(resources, report(baseline=(v1, 0.90, 0.6)))
    assert result.success
    assert materialized(result) == {"privacy_utility_report", "promotion_candidates", "registered_model"}
    gate = gate_of(result)
    assert gate.passed
    assert "privacy 0.4000 >= privacy floor 0.2000" in gate.metadata["baseline"].text
    assert "no champion yet" in gate.metadata["baseline"].text

    mv = champion(client)
    assert str(mv.version) == v1
    assert mv.tags["gate"] == "passed" and mv.tags["previous_champion"] == "none"
    assert float(mv.tags["utility"]) == pytest.approx(1.0)
    assert float(mv.tags["privacy"]) == pytest.approx(0.4)
    assert float(mv.tags["overall"]) == pytest.approx(2 * 0.4 / 1.4)
    assert float(mv.tags["verification_accuracy"]) == pytest.approx(0.90)
    decisions = result.output_for_node("registered_model")
    assert decisions["baseline"]["champion_version"] == v1 and decisions["baseline"]["alias"] == "champion"


def test_a_better_version_is_promoted_and_a_worse_one_is_not(resources, client, tmp_path):
    v1 = new_version(resources, tmp_path, "baseline", "w1")
    assert promote(resources, report(baseline=(v1, 0.90, 0.6))).success          # overall 0.5714

    v2 = new_version(resources, tmp_path, "baseline", "w2")
    better = promote(resources, report(baseline=(v2, 0.90, 0.4)))               # overall 0.75
    assert better.success
    assert "overall 0.7500 > champion v1's 0.5714" in gate_of(better).metadata["baseline"].text
    mv = champion(client)
    assert str(mv.version) == v2 and mv.tags["previous_champion"] == v1
    assert better.output_for_node("registered_model")["baseline"]["previous_champion"] == v1

    v3 = new_version(resources, tmp_path, "baseline", "w3")
    worse = promote(resources, report(baseline=(v3, 0.90, 0.5)))                # overall 0.6667
    assert not worse.success                                                     # the blocking check stopped it
    gate = gate_of(worse)
    assert not gate.passed
    assert "overall 0.6667 <= champion v2's 0.7500" in gate.metadata["baseline"].text
    assert "registered_model" not in materialized(worse)
    assert str(champion(client).version) == v2                                   # champion unchanged
    challenger = client.get_model_version_by_alias(registered("baseline"), "challenger")
    assert str(challenger.version) == v3
    assert challenger.tags["gate"] == "failed"
    assert "overall 0.6667 <= champion v2's 0.7500" in challenger.tags["gate_reason"]
    assert float(challenger.tags["overall"]) == pytest.approx(2 / 3)
    assert float(challenger.tags["privacy"]) == pytest.approx(0.5)
    # `privface run` shows this refusal as the run's outcome instead of failing the demo
    assert "baseline: failed, challenger v3: " in _gate_refusal(worse)
    assert _gate_refusal(better) == ""

    # measured again (say on new data) and now better: promoted, and no longer the challenger
    assert promote(resources, report(baseline=(v3, 0.90, 0.2))).success           # overall 0.8889
    assert str(champion(client).version) == v3
    assert client.get_registered_model(registered("baseline")).aliases == {"champion": int(v3)}


def test_floors_refuse_per_defense_and_the_passing_one_is_still_promoted(resources, client, tmp_path):
    """dctdp has too little utility and no attack measured; baseline passes. The check
    passes (one candidate passes) and only baseline gets the champion alias."""
    vb = new_version(resources, tmp_path, "baseline", "wb")
    vd = new_version(resources, tmp_path, "dctdp", "wd")
    result = promote(resources, report(baseline=(vb, 0.90, 0.5), dctdp=(vd, 0.72, None)))
    assert result.success and gate_of(result).passed
    text = gate_of(result).metadata["dctdp"].text
    assert text.startswith("failed, challenger") and "utility 0.8000 < utility floor 0.8500" in text
    assert "no measured privacy score" in text

    assert str(champion(client).version) == vb
    decisions = result.output_for_node("registered_model")
    assert decisions["dctdp"]["champion_version"] is None and decisions["baseline"]["champion_version"] == vb
    assert client.get_registered_model(registered("dctdp")).aliases == {"challenger": int(vd)}
    dctdp = client.get_model_version(registered("dctdp"), vd)
    assert dctdp.tags["privacy"] == "n/a" and dctdp.tags["gate"] == "failed"


def test_a_failed_run_leaves_the_champion_untouched(resources, client, tmp_path):
    v1 = new_version(resources, tmp_path, "baseline", "w1")
    assert promote(resources, report(baseline=(v1, 0.90, 0.6))).success
    before = champion(client).tags

    # the report fails: nothing downstream runs
    v2 = new_version(resources, tmp_path, "baseline", "w2")
    failed = promote(resources, None)
    assert not failed.success and materialized(failed) == set()
    assert str(champion(client).version) == v1

    # promotion_candidates fails half way (dctdp's version was never registered) after a
    # better baseline passed its gate: the champion alias still does not move
    broken = promote(resources, report(baseline=(v2, 0.90, 0.4), dctdp=("7", 0.90, 0.4)))
    assert not broken.success
    assert "promotion_candidates" not in materialized(broken) and "registered_model" not in materialized(broken)
    mv = champion(client)
    assert str(mv.version) == v1 and mv.tags == before
    assert _gate_refusal(broken) == ""                     # a real failure stays a failure for the CLI

    # once the run succeeds, the better version is promoted over the same champion
    assert promote(resources, report(baseline=(v2, 0.90, 0.4))).success
    assert str(champion(client).version) == v2
