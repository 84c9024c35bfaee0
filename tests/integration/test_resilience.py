"""Resilience on real Dagster and a real sqlite MLflow store: a training run killed with
SIGKILL in the middle of training resumes from its checkpoint when the asset is
materialized again (in a new process), ending with the weights of an uninterrupted run;
an asset that raises fails its Dagster run and leaves its MLflow run FAILED, not RUNNING."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import dagster as dg
import mlflow
import pytest
import torch

from components.training.checkpoint import load_checkpoint
from pipelines.definitions import build_definitions
from tests.integration.conftest import ROOT, privface_experiment, registered

pytestmark = pytest.mark.integration

# A real Dagster run of the `prepare` job's assets named in argv, in a process of its own, on
# the instance in DAGSTER_HOME; prints the Dagster run id.
MATERIALIZE = """
import json, sys
from pipelines import telemetry  # noqa: F401
import dagster as dg
from pipelines.definitions import build_definitions
cfg = json.loads(sys.argv[1])
result = build_definitions(**cfg["resources"]).resolve_job_def("prepare").execute_in_process(
    instance=dg.DagsterInstance.get(), raise_on_error=False, asset_selection=[dg.AssetKey(k) for k in cfg["assets"]])
print("DAGSTER_RUN_ID", result.run_id, flush=True)
sys.exit(0 if result.success else 1)
"""

EPOCHS = 6
# batch 8: 15 optimizer steps per epoch on the ci train split, so an epoch lasts long enough
# for the kill to land inside training rather than after it
TRAIN = {"baseline": {"train": {"epochs": EPOCHS, "batch_size": 8}}}
PREPARE = ["face_dataset", "dataset_splits", "baseline_fr_model"]


def _resources(tmp_path, ci_data, mlflow_uri, workdir: str) -> dict:
    return dict(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / workdir),
                reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, progress=False,
                overrides=json.dumps(TRAIN))


def _command(resources: dict, assets: list[str]) -> list[str]:
    return [sys.executable, "-c", MATERIALIZE, json.dumps({"resources": resources, "assets": assets})]


def _train_loss_steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))


def test_training_killed_mid_run_resumes_from_its_checkpoint_when_rematerialized(tmp_path, ci_data, dagster_home,
                                                                                mlflow_uri):
    resources = _resources(tmp_path, ci_data, mlflow_uri, "work")
    checkpoints = tmp_path / "work" / "checkpoints" / "baseline"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:   # a file, not a pipe: a full pipe would stall the child, not train it
        proc = subprocess.Popen(_command(resources, PREPARE), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not list(checkpoints.glob("*/last.pt")):     # written atomically after each epoch
                assert proc.poll() is None, f"the run ended before its first checkpoint:\n{log.read_text()[-4000:]}"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    (ckpt_file,) = checkpoints.glob("*/last.pt")
    at_kill = load_checkpoint(ckpt_file)
    done = int(at_kill["epoch"])
    assert 1 <= done < EPOCHS, "the kill did not land mid-training"

    # the asset again, alone, in a new process: its inputs come from the store
    again = subprocess.run(_command(resources, ["baseline_fr_model"]), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    run_id = next(line.split()[1] for line in again.stdout.splitlines() if line.startswith("DAGSTER_RUN_ID"))

    # only the epochs after the kill were trained: the resumed MLflow run logged just those
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    exp = privface_experiment(client)
    (resumed,) = client.search_runs([exp.experiment_id],
                                    filter_string=f"tags.dagster_run_id = '{run_id}' and tags.asset = 'baseline'")
    assert resumed.info.status == "FINISHED"
    assert _train_loss_steps(client, resumed.info.run_id) == list(range(done + 1, EPOCHS + 1))
    (killed,) = [r for r in client.search_runs([exp.experiment_id], filter_string="tags.asset = 'baseline'")
                 if r.data.tags["dagster_run_id"] != run_id]
    assert set(_train_loss_steps(client, killed.info.run_id)) <= set(range(1, done + 1))

    # the asset's value: the whole history, its first epochs exactly those of the killed
    # process (their timings too: carried over, not retrained), and the uninterrupted weights
    instance = dg.DagsterInstance.get()
    value = build_definitions(**resources).load_asset_value("baseline_fr_model", instance=instance)
    assert [h["epoch"] for h in value["history"]] == list(range(1, EPOCHS + 1))
    assert value["history"][:done] == at_kill["history"]
    straight_resources = _resources(tmp_path, ci_data, mlflow_uri, "straight")
    straight = build_definitions(**straight_resources).resolve_job_def("prepare").execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(k) for k in PREPARE])
    assert straight.success
    reference = straight.output_for_node("baseline_fr_model")
    for part in ("backbone", "head"):
        assert value[part].keys() == reference[part].keys()
        for key, tensor in reference[part].items():
            torch.testing.assert_close(value[part][key], tensor, atol=1e-5, rtol=1e-4, msg=f"{part}.{key}")
    assert [h["loss"] for h in value["history"]] == pytest.approx([h["loss"] for h in reference["history"]],
                                                                   rel=1e-4)


def test_a_failing_asset_fails_its_dagster_run_and_marks_its_mlflow_run_failed(tmp_path, ci_data, dagster_home,
                                                                               mlflow_uri):
    defs = build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                             reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, progress=False,
                             overrides=json.dumps({"dctdp": {"eps_mean": -1.0}}))   # a budget must be > 0
    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("full_pipeline").execute_in_process(
        instance=instance, partition_key="dctdp", raise_on_error=False,
        asset_selection=[dg.AssetKey(k) for k in (*PREPARE, "protected_system")])

    assert not result.success
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "protected_system"
    assert "eps_mean must be > 0, got -1.0" in failure.event_specific_data.error.to_string()

    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    exp = privface_experiment(client)
    runs = {r.data.tags["asset"]: r for r in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'")}
    assert runs["protected_system"].data.tags["partition"] == "dctdp"
    assert runs["protected_system"].info.status == "FAILED"
    assert runs["protected_system"].info.end_time is not None          # closed, not left running
    assert runs["baseline"].info.status == "FINISHED"                  # the asset before it succeeded
    assert client.search_registered_models(f"name = '{registered('dctdp', ci_data)}'") == []
