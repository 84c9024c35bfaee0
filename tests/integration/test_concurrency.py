"""Several runs at once on the same stores (issue 7, point 6): one Dagster home, one sqlite
MLflow store, one workdir and one reports dir, written by processes running at the same
time. The first test runs two real pipeline runs as subprocesses; the others start a few
processes on a barrier against the two places where concurrent writers used to break
each other: a new MLflow sqlite store (created and migrated by whoever came first, the
others failing with "table ... already exists" or "database is locked", and the same
weights registered twice), and an IO-manager folder swapped by two writers at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from tests.integration.conftest import privface_experiment, registered

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAFETY_TIMEOUT_S = 1800   # only so that a hung child cannot hang the suite; not a performance limit


def _tail(path: Path, n: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no output)"
    return text[-n:]


def test_two_pipeline_runs_at_once_on_the_same_stores(tmp_path, ci_data, dagster_home, mlflow_uri):
    """Two processes each run `prepare` and the baseline's protected_system (which logs and
    registers a model) at the same moment, on one new Dagster home (its dagster.yaml sets no
    pool limit, so the training steps of both runs overlap), one new sqlite MLflow store and
    one workdir. Both succeed, and both stores hold both runs."""
    env = dict(os.environ, PRIVFACE_PROFILE="ci", PRIVFACE_DATA_DIR=str(ci_data),
               PRIVFACE_WORKDIR=str(tmp_path / "work"), PRIVFACE_REPORTS_DIR=str(tmp_path / "reports"),
               MLFLOW_TRACKING_URI=mlflow_uri, DAGSTER_HOME=str(dagster_home), PYTHONUNBUFFERED="1")
    children = []
    for i in range(2):
        out, err = tmp_path / f"run{i}.out", tmp_path / f"run{i}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen([sys.executable, "-m", "tests.integration.concurrent_run"], cwd=ROOT,
                                    env=env, stdout=fo, stderr=fe)
        children.append((proc, out, err))
    try:
        for proc, _, _ in children:
            proc.wait(timeout=SAFETY_TIMEOUT_S)
    finally:
        for proc, _, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join(f"--- run {i} (rc {p.returncode}) stderr:\n{_tail(err)}" for i, (p, _, err) in enumerate(children))
    assert all(p.returncode == 0 for p, _, _ in children), logs
    assert "database is locked" not in logs

    run_ids = [json.loads(out.read_text().strip().splitlines()[-1]) for _, out, _ in children]
    instance = dg.DagsterInstance.get()
    all_ids = [r[job] for r in run_ids for job in ("prepare", "defend_and_attack")]
    assert len(set(all_ids)) == 4
    for run_id in all_ids:
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS, run_id
    # each asset has one materialization per run, in the instance both runs wrote to
    for asset, job in (("face_dataset", "prepare"), ("baseline_fr_model", "prepare"),
                       ("protected_system", "defend_and_attack")):
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        assert sorted(r.run_id for r in records) == sorted(ids[job] for ids in run_ids), asset
    # the Great Expectations check wrote one GX project in the shared reports dir, twice
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("face_dataset"), "data_quality"), limit=10)
    assert sorted(h.run_id for h in history) == sorted(ids["prepare"] for ids in run_ids)
    assert all(h.status.value == "SUCCEEDED" for h in history), [h.status for h in history]

    # MLflow: every run of both pipelines is there, finished, tagged with its Dagster run
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    exp = privface_experiment(client)                # one experiment, created once by two runs
    epochs_logged = []
    for ids in run_ids:
        for job, assets in (("prepare", {"baseline", "evaluation"}), ("defend_and_attack", {"protected_system"})):
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{ids[job]}'")
            assert {r.data.tags["asset"] for r in runs} == assets, (job, [r.data.tags for r in runs])
            assert all(r.info.status == "FINISHED" for r in runs)
            epochs_logged += [len(client.get_metric_history(r.info.run_id, "train_loss")) for r in runs
                              if r.data.tags["asset"] == "baseline"]
    # ci trains 2 epochs; the run that started second may resume from the first one's checkpoint
    # in the shared workdir (same data, same config) and so log fewer epochs
    assert max(epochs_logged) == 2 and all(n <= 2 for n in epochs_logged), epochs_logged
    # the registry: no content registered twice, and each protected_system run names its version
    name = registered("baseline", ci_data)
    versions = client.search_model_versions(f"name = '{name}'")
    hashes = [v.tags["content_hash"] for v in versions]
    assert versions and len(hashes) == len(set(hashes)), hashes
    systems = client.search_runs([exp.experiment_id], filter_string="tags.asset = 'protected_system'")
    assert len(systems) == 2
    assert {r.data.tags["model_version"] for r in systems} <= {str(v.version) for v in versions}

    # the shared workdir holds one readable value per asset (no half-swapped or leftover folders)
    from pipelines.io_manager import fetch

    store = tmp_path / "work" / "store"
    assert fetch(store / "protected_system" / "baseline")["mlflow"]["registered_model"] == name
    assert fetch(store / "face_dataset" / "__all__").images.shape[0] == 240
    leftovers = [p for p in store.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
    assert (tmp_path / "reports" / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()


# ---- a new MLflow store opened by several processes at once ----

def _open_store_and_register(uri: str, barrier, worker: int, out) -> None:
    try:
        from pipelines.resources import MLflowResource

        barrier.wait()
        res = MLflowResource(tracking_uri=uri)
        client = res.client()
        exp = client.get_experiment_by_name("privface")
        run = client.create_run(exp.experiment_id, tags={"worker": str(worker)})
        client.log_metric(run.info.run_id, "value", float(worker))
        version = res.register("privface-concurrency", f"{run.info.artifact_uri}/model", run.info.run_id,
                               "same-weights", tags={"worker": str(worker)})
        client.set_terminated(run.info.run_id)
        out.put((worker, str(version)))
    except BaseException:
        out.put((worker, traceback.format_exc()))


def _start_on_barrier(target, args: tuple, workers: int) -> dict:
    """Run target(*args, barrier, worker, queue) in `workers` fresh processes released at
    the same moment; {worker: what it put on the queue}."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, w, out)) for w in range(workers)]
    for p in procs:
        p.start()
    try:
        results = dict(out.get(timeout=SAFETY_TIMEOUT_S) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def test_new_mlflow_store_opened_by_three_processes_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = _start_on_barrier(_open_store_and_register, (uri,), workers=3)
    errors = {w: r for w, r in results.items() if not r.isdigit()}
    assert not errors, "\n".join(f"worker {w}:\n{r}" for w, r in errors.items())
    assert set(results.values()) == {"1"}            # the same weights: one version, found by all
    client = mlflow.MlflowClient(uri, uri)
    exp = client.get_experiment_by_name("privface")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["worker"] for r in runs) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(client.search_model_versions("name = 'privface-concurrency'")) == 1
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as db:   # readers no longer block the writer
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- one IO-manager folder written and read by two processes at once ----

def _store_and_read(folder: str, rounds: int, barrier, worker: int, out) -> None:
    try:
        from pipelines.io_manager import fetch, store

        barrier.wait()
        seen = set()
        for i in range(rounds):
            store({"worker": worker, "round": i, "payload": [worker] * 2000}, Path(folder))
            value = fetch(Path(folder))
            assert value["payload"] == [value["worker"]] * 2000, "a value mixed from two writes"
            seen.add(value["worker"])
        out.put((worker, f"ok {sorted(seen)}"))
    except BaseException:
        out.put((worker, traceback.format_exc()))


def test_one_store_folder_swapped_by_two_writers_at_once(tmp_path):
    folder = tmp_path / "store" / "asset" / "__all__"
    results = _start_on_barrier(_store_and_read, (str(folder), 300), workers=2)
    assert all(r.startswith("ok") for r in results.values()), "\n".join(results.values())
    from pipelines.io_manager import fetch

    last = fetch(folder)
    assert last["worker"] in (0, 1) and last["round"] == 299   # one writer's last value, whole
    # no temp or displaced copy left behind (the lock file may stay)
    assert {p.name for p in folder.parent.iterdir()} - {".__all__.lock"} == {"__all__"}


# ---- what a busy store does to a call ----

def test_busy_store_calls_are_retried_and_other_errors_are_not():
    """A store busy past MLflow's own 20 s wait reports TEMPORARILY_UNAVAILABLE: the call is
    made again (it was rolled back); any other error is raised at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from pipelines.resources import _retry

    calls = []

    def busy_twice():
        calls.append("busy")
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        return "created"

    assert _retry(busy_twice, first_wait=0.001) == "created" and len(calls) == 3

    missing = []

    def not_found():
        missing.append(1)
        raise MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="no such run"):
        _retry(not_found, first_wait=0.001)
    assert len(missing) == 1

    always = []

    def always_busy():
        always.append(1)
        raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)

    with pytest.raises(MlflowException, match="database is locked"):
        _retry(always_busy, attempts=4, first_wait=0.001)
    assert len(always) == 4
