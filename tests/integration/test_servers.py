"""The pipeline behind real servers (issue 7, point 3), both bound to 127.0.0.1 and stopped
when the test ends:

- `dagster-webserver` on a temp DAGSTER_HOME: a materialization of the `prepare` job is
  launched through its GraphQL API, runs to SUCCESS without the daemon (the instance uses
  the DefaultRunCoordinator, so the webserver launches the run itself), and the assets'
  materialization metadata is read back through GraphQL;
- `mlflow server` on a temp sqlite store, serving artifacts: the pipeline, pointed at it by
  its http URI, tracks runs, logs models through the server and registers them; the REST
  client finds the runs with their tags, the registered version and its alias."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import requests

from tests.integration.servers import HOST, free_port, listening_on, running_server, wait_for
from tests.integration.conftest import privface_experiment, registered

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 1200   # a ceiling for a loaded machine, not a performance limit

INSTANCE_YAML = """telemetry:
  enabled: false
run_coordinator:          # launch runs at once from the webserver; the queued default needs the daemon
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""

WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

MATERIALIZATION_QUERY = """
query ($assetKey: AssetKeyInput!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 5) {
        runId
        metadataEntries {
          label
          __typename
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""


def _graphql(server, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{server.url}/graphql", json={"query": query, "variables": variables or {}},
                             timeout=60)
    assert response.status_code == 200, f"{response.status_code} {response.text[:2000]}\n{server.log()}"
    body = response.json()
    assert not body.get("errors"), f"{body['errors']}\n{server.log()}"
    return body["data"]


def _location_loaded(server):
    """The code location's entry once it finished loading (a load error fails the test)."""
    data = _graphql(server, WORKSPACE_QUERY)["workspaceOrError"]
    assert data["__typename"] == "Workspace", data
    entries = data["locationEntries"]
    if not entries or entries[0]["loadStatus"] != "LOADED":
        return None
    error = entries[0]["locationOrLoadError"]
    assert error["__typename"] == "RepositoryLocation", f"{error}\n{server.log()}"
    return entries[0]


def _run_failures(home: Path, run_id: str) -> str:
    """The step failures of a run, read from the instance the webserver wrote to."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return "\n".join(f"{e.step_key}: {e.dagster_event.event_specific_data.error.to_string()}"
                         for e in instance.all_logs(run_id)
                         if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE")


def test_dagster_webserver_launches_a_materialization_through_graphql(tmp_path, ci_data, ci_params):
    from dagster_graphql import DagsterGraphQLClient

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    env = dict(os.environ, DAGSTER_HOME=str(home), PRIVFACE_PROFILE="ci", PRIVFACE_DATA_DIR=str(ci_data),
               PRIVFACE_WORKDIR=str(tmp_path / "work"), PRIVFACE_REPORTS_DIR=str(tmp_path / "reports"),
               MLFLOW_TRACKING_URI=mlflow_uri, PYTHONUNBUFFERED="1")
    port = free_port()
    cmd = [str(BIN / "dagster-webserver"), "-m", "pipelines.definitions", "-h", HOST, "-p", str(port)]
    with running_server(cmd, "/server_info", port, tmp_path / "webserver.log", env, ROOT) as server:
        info = requests.get(f"{server.url}/server_info", timeout=10).json()
        assert info["dagster_version"] == dg.__version__
        location = wait_for(lambda: _location_loaded(server), "the code location to load", server)
        # the webserver and the code server it started listen on the loopback interface only
        sockets = listening_on(server)
        assert (HOST, port) in sockets and {ip for ip, _ in sockets} == {HOST}, sockets

        client = DagsterGraphQLClient(HOST, port_number=port)
        # one process for the whole run (the default multiprocess executor starts one per step)
        run_id = client.submit_job_execution(
            "prepare", repository_location_name=location["name"],
            run_config={"execution": {"config": {"in_process": {}}}}, tags={"privface/trigger": "test"})

        def finished():
            status = client.get_run_status(run_id)
            done = status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
            return status if done else None

        status = wait_for(finished, f"run {run_id} to finish", server, timeout_s=RUN_TIMEOUT_S)
        assert status == dg.DagsterRunStatus.SUCCESS, f"{status}\n{_run_failures(home, run_id)}\n{server.log()}"

        def materialization(asset: str) -> dict:
            data = _graphql(server, MATERIALIZATION_QUERY, {"assetKey": {"path": [asset]}})["assetOrError"]
            assert data["__typename"] == "Asset", data
            events = [m for m in data["assetMaterializations"] if m["runId"] == run_id]
            assert len(events) == 1, (asset, data)
            return {e["label"]: e.get("intValue", e.get("floatValue", e.get("text")))
                    for e in events[0]["metadataEntries"]}

        synthetic = ci_params["data"]["synthetic"]
        dataset = materialization("face_dataset")
        assert dataset["identities"] == synthetic["identities"] == 40
        assert dataset["images"] == synthetic["identities"] * synthetic["images_per_identity"]
        splits = materialization("dataset_splits")
        assert sum(v for k, v in splits.items()   # held-out photos belong to train identities
                   if k.startswith("identities_") and k != "identities_holdout") == synthetic["identities"]
        assert splits["identities_holdout"] == splits["identities_train"] and splits["holdout_photos"] > 0
        model = materialization("baseline_fr_model")
        assert model["epochs"] == ci_params["baseline"]["train"]["epochs"]
        assert 0.0 <= model["verification_accuracy"] <= 1.0

    assert not server.alive()   # stopped with the block
    # the launched run tracked to the MLflow store named by the webserver's environment
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    run = client.get_run(model["mlflow_run_id"])
    assert run.data.tags["dagster_run_id"] == run_id and run.data.tags["asset"] == "baseline"
    # and wrote its values where PRIVFACE_WORKDIR said
    assert (tmp_path / "work" / "store" / "baseline_fr_model" / "__all__" / "kind").is_file()


# attacks kept to a few steps: the test is about the server, not the attacks' strength
LIGHT_ATTACKS = {"attacks": {"template_inversion": {"epochs": 1}, "representation_recovery": {"epochs": 1},
                             "model_inversion": {"steps": 5}, "attribute_inference": {"max_iter": 20}}}


def test_pipeline_tracks_to_an_mlflow_server(tmp_path, ci_data, dagster_home, monkeypatch):
    from pipelines.definitions import build_definitions

    port = free_port()
    uri = f"http://{HOST}:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(tmp_path / "server" / "artifacts")]
    (tmp_path / "server").mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    with running_server(cmd, "/health", port, tmp_path / "mlflow-server.log", env, tmp_path) as server:
        sockets = listening_on(server)
        assert (HOST, port) in sockets and {ip for ip, _ in sockets} == {HOST}, sockets
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        defs = build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                                 reports_dir=str(tmp_path / "reports"), mlflow_uri=uri, progress=False,
                                 overrides=json.dumps(LIGHT_ATTACKS))
        instance = dg.DagsterInstance.get()
        results = {}
        for job, partition in (("prepare", None), ("defend_and_attack", "baseline"), ("report", None)):
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                                  raise_on_error=False)
            failures = "\n".join(f"{e.step_key}: {e.event_specific_data.error.to_string()}"
                                 for e in result.all_events if e.event_type_value == "STEP_FAILURE")
            assert result.success, f"{job}: {failures}\n{server.log()}"
            results[job] = result.run_id

        client = mlflow.MlflowClient(uri, uri)
        exp = privface_experiment(client)
        assert exp is not None, server.log()
        assert exp.artifact_location.startswith("mlflow-artifacts:")   # the server chose it: proxied
        runs = client.search_runs([exp.experiment_id])
        by_asset = {r.data.tags["asset"]: r for r in runs}
        assert set(by_asset) >= {"baseline", "evaluation", "protected_system", "attack_results",
                                 "privacy_utility_report"}, sorted(by_asset)
        assert all(r.info.status == "FINISHED" for r in runs)
        assert by_asset["baseline"].data.tags["dagster_run_id"] == results["prepare"]
        system = by_asset["protected_system"]
        assert system.data.tags["dagster_run_id"] == results["defend_and_attack"]
        assert system.data.tags["partition"] == "baseline" and system.data.tags["defense"] == "baseline"
        assert len(client.get_metric_history(by_asset["baseline"].info.run_id, "train_loss")) == 2
        assert "verification_accuracy" in system.data.metrics

        # the registry: the system's version, and the alias the promotion step set on it
        versions = client.search_model_versions(f"name = '{registered('baseline', ci_data)}'")
        assert [str(v.version) for v in versions] == [system.data.tags["model_version"]]
        assert versions[0].run_id == system.info.run_id
        # which alias depends on the promotion gate (pipelines/assets/promotion_assets.py); the
        # report job sets one of the two on the version, and the server returns it
        model = client.get_registered_model(registered("baseline", ci_data))
        assert model.aliases and set(model.aliases) <= {"champion", "challenger"}, model.aliases
        assert {str(v) for v in model.aliases.values()} == {str(versions[0].version)}
        alias = next(iter(model.aliases))
        assert str(client.get_model_version_by_alias(registered("baseline", ci_data), alias).version) == str(versions[0].version)
        # the model's files went through the server into its artifact destination
        assert any((tmp_path / "server" / "artifacts").rglob("MLmodel")), server.log()
    assert not server.alive()


def test_make_targets_bind_the_uis_to_127_0_0_1():
    """`make ui` and `make mlflow-ui` (dry run, install step taken as done) bind to 127.0.0.1."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "ui", "mlflow-ui"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    dagster = next(line for line in out.splitlines() if " dev -m pipelines.definitions" in line)
    mlflow_ui = next(line for line in out.splitlines() if "--port 5000" in line)
    assert " -h 127.0.0.1 " in dagster, dagster
    assert "--host 127.0.0.1 " in mlflow_ui, mlflow_ui
