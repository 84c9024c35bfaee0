"""The whole asset graph on the ci profile through real Dagster (a real instance in a
temp DAGSTER_HOME) and a real sqlite MLflow store: metrics contract, runs, registry."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import numpy as np
import pytest

from components.config import ParamsError
from components.metrics.embeddings import to_model_tensor
from pipelines.definitions import build_definitions
from tests.integration.conftest import privface_experiment, registered

pytestmark = pytest.mark.integration

CONTRACT_UTILITY = {"verification_accuracy", "verification_std", "tar_at_far_1e-3", "eer", "rank1"}


@pytest.fixture()
def pipeline(tmp_path, ci_data, dagster_home, mlflow_uri):
    defs = build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                             reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, progress=False)
    return defs, dg.DagsterInstance.get(), tmp_path


def run_full(defs, instance, partition="baseline"):
    return defs.resolve_job_def("full_pipeline").execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False)


def failures(result) -> str:
    """The step failures of a run, for assertion messages."""
    return "\n".join(f"{e.step_key}: {e.event_specific_data.error.to_string()}"
                     for e in result.all_events if e.event_type_value == "STEP_FAILURE")


def test_whole_graph_writes_contract_metrics_tracks_and_registers(pipeline, mlflow_uri, ci_data):
    defs, instance, tmp = pipeline
    result = run_full(defs, instance)
    assert result.success, failures(result)

    # every blocking check ran and passed
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    for name in ("manifest_schema", "data_quality", "splits_disjoint", "baseline_model_sane",
                 "evaluation_model_sane", "promotion_gate"):
        assert checks.get(name) is True, (name, checks)

    metrics = json.loads((tmp / "reports" / "metrics.json").read_text())
    assert set(metrics["dataset"]) >= {"name", "version", "identities", "images"}
    assert metrics["dataset"]["identities"] == 40 and metrics["dataset"]["images"] == 240
    base = metrics["defenses"]["baseline"]
    assert set(base["utility"]) == CONTRACT_UTILITY | {"impostor_pairs", "ci95"}
    assert all(0.0 <= v <= 1.0 for k, v in base["utility"].items() if k not in ("impostor_pairs", "ci95"))
    # 95% intervals (bootstrap over identities) around accuracy, TAR@FAR, rank-1, every score
    for block, keys in ((base["utility"], ("verification_accuracy", "tar_at_far_1e-3", "rank1")),
                        (base["scores"], ("privacy", "privacy_all", "overall"))):
        for k in keys:
            lo, hi = block["ci95"][k]
            assert 0.0 <= lo <= hi <= 1.0 and lo - 0.1 <= block[k] <= hi + 0.1, (k, block[k], lo, hi)
    assert base["scores"]["ci95"]["utility"] == [1.0, 1.0]   # the baseline against itself, replicate by replicate
    # TAR@FAR rests on every cross-identity pair of the 10 test identities (6 images each)
    assert base["utility"]["impostor_pairs"] == (60 * 59 - 10 * 6 * 5) // 2
    assert base["scores"]["utility"] == pytest.approx(1.0)
    assert base["threat_model"] == {"protects": [], "in_scope": [], "note": base["threat_model"]["note"]}
    attacks = base["attacks"]
    # every block names its strongest variant and keeps each variant's figures; on the
    # baseline only the membership signals differ from the plain attacks
    assert all(attacks[a]["variant"] in attacks[a]["variants"] for a in attacks)
    assert set(attacks["membership_inference"]["variants"]) == {"plain", "template", "confidence", "image",
                                                               "image_confidence"}
    image = attacks["membership_inference"]["variants"]["image"]   # training vs held-out photos of 20 members
    assert image["n_non_members"] == 40 and image["n_members"] == 80
    assert set(attacks["template_inversion"]["variants"]) == {"plain"}
    assert set(attacks["model_inversion"]["variants"]) == {"plain"}
    for a, block in attacks.items():   # every attack's advantage has its interval, every variant's too
        assert 0.0 <= block["ci95"]["advantage"][0] <= block["ci95"]["advantage"][1] <= 1.0, a
        assert all("advantage" in v["ci95"] for v in block["variants"].values()), a
    attacks = {a: {k: v for k, v in block.items() if k not in ("variant", "variants", "ci95")}
               for a, block in attacks.items()}
    for name in ("template_inversion", "representation_recovery"):
        assert set(attacks[name]) == {"ssim", "psnr_db", "sar_type1", "sar_type2", "sar_ceiling", "advantage",
                                      "impostor_pairs"}
    assert set(attacks["model_inversion"]) == {"top1", "top5", "knn_dist", "chance", "advantage"}
    # fewer than 100 negatives: no TPR at low FPR is reported
    assert set(attacks["membership_inference"]) == {"auc", "advantage", "n_members", "n_non_members"}
    # sex is probed; skin tone has a value with fewer than two of the ci profile's 10 public
    # identities to learn from, and is then skipped (with the reason in the strength record)
    assert set(attacks["attribute_inference"]) >= {"sex", "advantage"}
    assert all(set(m) == {"balanced_accuracy", "chance", "leakage_bits", "advantage", "ci95"}
               for a, m in attacks["attribute_inference"].items() if a != "advantage")
    assert all(0.0 <= attacks[a]["advantage"] <= 1.0 for a in attacks)
    assert 0.0 <= base["scores"]["privacy"] <= 1.0 and 0.0 <= base["scores"]["overall"] <= 1.0
    assert base["scores"]["privacy"] == base["scores"]["privacy_all"]    # the baseline claims nothing
    # reconstruction grids and the membership ROC are inlined beside the three report figures
    assert (tmp / "reports" / "report.html").read_text().count("<img") >= 6
    assert (tmp / "reports" / "gx").is_dir()

    # MLflow: one run per asset partition, tagged; the registered version and alias
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    exp = privface_experiment(client)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    by_asset = {r.data.tags["asset"]: r for r in runs}
    assert set(by_asset) == {"baseline", "evaluation", "protected_system", "attack_results",
                             "privacy_utility_report"}
    ps = by_asset["protected_system"]
    assert ps.data.tags["partition"] == "baseline"
    assert ps.data.tags["code_version"] and ps.data.tags["dvc_data_md5"]
    assert ps.data.tags["data_version"] == metrics["dataset"]["version"]
    assert ps.data.metrics["verification_accuracy"] == pytest.approx(base["utility"]["verification_accuracy"])
    history = client.get_metric_history(by_asset["baseline"].info.run_id, "train_loss")
    assert len(history) == 2                        # per-epoch metrics, ci profile trains 2 epochs
    assert base["mlflow"]["run_id"] == ps.info.run_id
    # every run that learns from the data names it as an MLflow input: the split, and the data's
    # digest (its content version here: a temp folder outside DVC's data/)
    learnt = {"baseline": {"train"}, "evaluation": {"train"}, "protected_system": {"train", "public"},
              "attack_results": {"public"}}
    for asset, splits in learnt.items():
        inputs = client.get_run(by_asset[asset].info.run_id).inputs.dataset_inputs
        contexts = {t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == splits, (asset, contexts)
        assert {i.dataset.digest for i in inputs} == {metrics["dataset"]["version"]}, asset

    champion = client.get_model_version_by_alias(registered("baseline", ci_data), "champion")
    assert str(champion.version) == base["mlflow"]["model_version"]
    assert champion.tags["gate"] == "passed"
    # the report run keeps each defense's attack files under its own folder (none overwritten)
    def files(run_id, path):
        for f in client.list_artifacts(run_id, path):
            yield from (files(run_id, f.path) if f.is_dir else [f.path])
    report_files = list(files(by_asset["privacy_utility_report"].info.run_id, "report"))
    for attack in ("membership_inference", "template_inversion"):
        assert any(f.startswith(f"report/baseline/{attack}/") and f.endswith(".png") for f in report_files), \
            (attack, report_files)
    assert "report/metrics.json" in report_files and "report/report.html" in report_files
    card = champion.description                     # the model card, completed at the gate
    assert "privface `baseline`" in card and "Promotion gate: passed" in card and "Scores:" in card, card
    assert metrics["dataset"]["version"] in card and "Verification accuracy: 0." in card, card
    # the gate's numbers come from metrics.json and stay on the version for the next run to beat
    assert float(champion.tags["overall"]) == pytest.approx(base["scores"]["overall"], abs=1e-6)
    assert float(champion.tags["privacy"]) == pytest.approx(base["scores"]["privacy"], abs=1e-6)

    # the registered model serves templates: unit-norm, same as the pipeline's system
    model = mlflow.pyfunc.load_model(f"models:/{registered('baseline', ci_data)}@champion")
    images = np.stack([np.full((32, 32, 3), v, dtype=np.uint8) for v in (20, 120, 220)])
    out = model.predict(to_model_tensor(images).numpy())
    assert out.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)

    # re-running the same materialization neither duplicates nor corrupts registry state
    again = run_full(defs, instance)
    assert again.success, failures(again)
    versions = client.search_model_versions(f"name = '{registered('baseline', ci_data)}'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias(registered("baseline", ci_data), "champion").version == champion.version
    # the rerun's metadata names the version the registry holds, with that version's model and run
    (mat,) = again.asset_materializations_for_node("protected_system")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert str(meta["model_version"]) == str(champion.version)
    assert (meta["model_uri"], meta["model_run_id"]) == (champion.source, champion.run_id)
    assert meta["model_run_id"] == ps.info.run_id != meta["mlflow_run_id"]
    acc = meta["verification_accuracy"]
    assert acc == float(f"{acc:.4g}")                 # four significant digits in the UI


def test_failing_defense_fails_clearly_and_leaves_registry_alone(tmp_path, ci_data, dagster_home, mlflow_uri):
    """A defense whose build fails (here a budget the schema accepts but the method refuses)
    fails its step with the reason, registers nothing and marks its MLflow run FAILED; a
    typo in its params is refused before any run, naming the key."""
    kwargs = dict(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                  reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, progress=False)
    with pytest.raises(ParamsError, match=r"dctdp.eps_meen: unknown key \(set by the command's overrides\)"):
        build_definitions(**kwargs, overrides=json.dumps({"dctdp": {"eps_meen": 1.0}}))
    defs = build_definitions(**kwargs, overrides=json.dumps({"dctdp": {"eps_mean": 0.0}}))
    result = run_full(defs, dg.DagsterInstance.get(), partition="dctdp")
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and "eps_mean must be > 0, got 0.0" in failures[0].event_specific_data.error.to_string()
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    assert client.search_registered_models(f"name = '{registered('dctdp', ci_data)}'") == []
    # its MLflow run is marked FAILED, not left running
    exp = privface_experiment(client)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.partition = 'dctdp' and tags.asset = 'protected_system'")
    assert runs and all(r.info.status == "FAILED" for r in runs), [(r.data.tags["asset"], r.info.status) for r in runs]


def test_frequency_defense_partition_with_sweep(tmp_path, ci_data, dagster_home, mlflow_uri):
    """dctdp through the stage jobs (as `privface run` does): its system is registered,
    attacked, swept over eps_mean (utility and recovery SSIM per value) and reported beside
    the baseline."""
    tmp = tmp_path
    defs = build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp / "work"),
                             reports_dir=str(tmp / "reports"), mlflow_uri=mlflow_uri, progress=False,
                             defenses="baseline,dctdp")
    instance = dg.DagsterInstance.get()
    for job, partition in (("prepare", None), ("defend_and_attack", "baseline"), ("defend_and_attack", "dctdp"),
                           ("report", None)):
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                              raise_on_error=False)
        assert result.success, failures(result)
    metrics = json.loads((tmp / "reports" / "metrics.json").read_text())
    d = metrics["defenses"]["dctdp"]
    assert d["params"]["eps_mean"] > 0 and set(d["utility"]) == CONTRACT_UTILITY | {"impostor_pairs", "ci95"}
    # the per-face budget it spends: eps_mean per coefficient over N coefficients, and what it is not
    assert d["params"]["mode"] == "project" and d["params"]["elements"] == 189 * 8 * 8
    assert d["params"]["epsilon_total"] == pytest.approx(d["params"]["eps_mean"] * d["params"]["elements"])
    html = (tmp / "reports" / "report.html").read_text()
    assert "epsilon_total" in html and "not a differential privacy guarantee" in html
    assert "representation_recovery" in d["attacks"] and "template_inversion" in d["attacks"]
    # its threat model: privacy over recovery and inversion, privacy_all over the whole battery
    assert d["threat_model"]["in_scope"] == ["representation_recovery", "model_inversion"]
    assert d["threat_model"]["protects"] == ["client_representation"]
    scoped = {a: d["attacks"][a] for a in d["threat_model"]["in_scope"]}
    assert d["scores"]["privacy"] == pytest.approx(
        0.4 * (1 - scoped["representation_recovery"]["ssim"]) + 0.6 * (1 - max(b["advantage"] for b in scoped.values())))
    assert d["scores"]["privacy_all"] <= d["scores"]["privacy"] + 1e-12
    assert d["measures"]["eps_max"] >= d["measures"]["eps_min"] > 0
    sweep = d["sweep"]
    # one curve per mode (params sweeps.dctdp.series), each over the same values
    assert sweep["knob"] == "eps_mean" and [(p["series"], p["value"]) for p in sweep["points"]] == [
        ("project", 1.0), ("project", 50.0), ("tface", 1.0), ("tface", 50.0)]
    for point in sweep["points"]:
        assert point["operating_point"]["eps_mean"] == point["value"]
        assert point["operating_point"]["mode"] == point["series"]
        assert 0.0 <= point["attacks"]["representation_recovery"]["ssim"] <= 1.0
        assert "ci95" in point["attacks"]["representation_recovery"] and "replicates" not in point["utility"]
    assert (tmp / "reports" / "sweeps.png").is_file()
    assert "Sweeps: utility against the privacy measure" in (tmp / "reports" / "report.html").read_text()
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    assert client.get_model_version_by_alias(registered("dctdp", ci_data), "champion").version == int(d["mlflow"]["model_version"])
    exp = privface_experiment(client)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.asset = 'defense_sweep' and tags.partition = 'dctdp'")
    assert len(runs) == 1 and len(client.get_metric_history(runs[0].info.run_id, "sweep_verification_accuracy")) == 4


def test_definitions_validate(dagster_home):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", "pipelines.definitions"],
                         capture_output=True, text=True, env={**os.environ, "DAGSTER_HOME": str(dagster_home)})
    assert out.returncode == 0, out.stdout + out.stderr


def test_attacker_work_is_shared_between_partitions_with_the_same_surface(tmp_path, ci_data, dagster_home,
                                                                          mlflow_uri):
    """AdvFace keeps the baseline's client transform, FR model and head: in a real run after
    the baseline's partition, its recovery U-Net, template decoder and model inversions are
    the baseline's (stated as `shared_from` in the logged strength), the recovery measures
    are the baseline's exactly, and its template-inversion measures are its own."""
    defs = build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                             reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, progress=False,
                             defenses="baseline,advface")
    instance = dg.DagsterInstance.get()
    for job, partition in (("prepare", None), ("defend_and_attack", "baseline"), ("defend_and_attack", "advface")):
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                              raise_on_error=False)
        assert result.success, failures(result)
    store = tmp_path / "work" / "store" / "attack_results"
    base = json.loads((store / "baseline" / "value.json").read_text())
    adv = json.loads((store / "advface" / "value.json").read_text())
    for attack in ("representation_recovery", "template_inversion", "model_inversion"):
        assert "shared_from" not in base["strength"][attack]
        assert adv["strength"][attack]["shared_from"] == "baseline", attack
    assert adv["attacks"]["representation_recovery"] == base["attacks"]["representation_recovery"]
    assert adv["attacks"]["model_inversion"] == base["attacks"]["model_inversion"]
    assert adv["attacks"]["template_inversion"] != base["attacks"]["template_inversion"]   # its own stored templates
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    exp = privface_experiment(client)
    run = client.search_runs([exp.experiment_id],
                             filter_string="tags.asset = 'attack_results' and tags.partition = 'advface'")[0]
    assert run.data.params["representation_recovery.shared_from"] == "baseline"
