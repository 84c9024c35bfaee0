"""Real face databases and bad input through `privface run`, as a user meets them (a
subprocess, a temp Dagster home and MLflow store, ORL copies): what is accepted and how it
is reported, what is refused and how the last lines say so, and that a refused run leaves
every stored file and registry alias of the previous good run exactly as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from components.data.ingest import load_dataset
from pipelines.definitions import build_definitions
from pipelines.resources import PrivfaceSettings
from tests.integration.conftest import ROOT, orl_copy, params_file, privface_experiment

pytestmark = pytest.mark.integration


def privface(*args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_lines(out, n: int) -> list[str]:
    return out.stderr.rstrip().splitlines()[-n:]


@pytest.fixture()
def env(dagster_home, mlflow_uri):
    return {**os.environ, "DAGSTER_HOME": str(dagster_home), "MLFLOW_TRACKING_URI": mlflow_uri}


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders (logs and refused sets' staging excluded)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and "logs" not in p.parts and "staging" not in p.parts and not p.name.endswith(".lock"):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def registry(uri: str) -> dict:
    client = mlflow.MlflowClient(uri, uri)
    return {m.name: (dict(m.aliases), sorted(v.version for v in client.search_model_versions(f"name = '{m.name}'")))
            for m in client.search_registered_models()}


def test_messy_but_harmless_data_is_accepted_and_refused_sets_change_nothing(tmp_path, att_faces_dir, env,
                                                                            mlflow_uri, dagster_home):
    faces = orl_copy(att_faces_dir, tmp_path / "data" / "faces")
    shutil.copy(faces / "s3" / "4.pgm", faces / "s3" / "4 (copy).pgm")      # one photo twice in one identity
    shutil.copy(faces / "s9" / "1.pgm", faces / "s9" / "11.pgm")
    (faces / "s5" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 not an image")
    (faces / "s5" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (faces / "__MACOSX" / "s1").mkdir(parents=True)
    (faces / "__MACOSX" / "s1" / "._1.pgm").write_bytes(b"\x00\x05\x16\x07")
    params = params_file(tmp_path)
    run = ("run", "--profile", "ci", "--params", str(params), "--data-dir", str(faces))

    good = privface(*run, env=env)
    assert good.returncode == 0, good.stderr[-3000:]
    assert ("face_dataset: 2 exact duplicate(s) within an identity kept once "
            "(s3/4 (copy).pgm = s3/4.pgm; s9/11.pgm = s9/1.pgm)") in good.stderr
    assert "skipped 4 operating-system file(s)" in good.stderr
    settings = PrivfaceSettings(profile="ci", data_dir=str(faces), params_path=str(params))
    workdir, reports = settings.workdir(), settings.reports_dir()
    assert tmp_path / "artifacts" in workdir.parents and reports.parent == tmp_path / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert (metrics["dataset"]["identities"], metrics["dataset"]["images"]) == (40, 400)
    stored = load_dataset(workdir / "store" / "face_dataset" / "__all__" / "dataset")
    assert [d["dropped"] for d in stored.duplicates] == ["s3/4 (copy).pgm", "s9/11.pgm"]
    suite_page = reports / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "expectations"
    page = (suite_page / "privface_manifest_quality.html").read_text()
    assert "s3/4 (copy).pgm" in page and "s9/11.pgm" in page              # the Data Docs list them
    before, aliases = snapshot(workdir / "store", reports), registry(mlflow_uri)
    assert aliases[settings.registered_model("baseline")][0] == {"champion": 1}

    # the same photo under two identities: refused at ingestion, both files named
    shutil.copy(faces / "s2" / "5.pgm", faces / "s7" / "twin.pgm")
    refused = privface(*run, env=env)
    assert refused.returncode == 1
    assert last_lines(refused, 5) == [
        last_lines(refused, 5)[0],
        f"  file:    {faces / 's7' / 'twin.pgm'}",
        f"  problem: same photo as {faces / 's2' / '5.pgm'} (identity 's7' and identity 's2')",
        "  fix:     a photo belongs to one person: remove it from the wrong identity's folder",
        last_lines(refused, 5)[4]]
    assert last_lines(refused, 5)[0].startswith("privface: prepare refused the input at face_dataset")
    assert last_lines(refused, 5)[4].startswith("  nothing stored was changed; full log: ")
    assert snapshot(workdir / "store", reports) == before and registry(mlflow_uri) == aliases
    (faces / "s7" / "twin.pgm").unlink()

    # refused by the data-quality suite (here: more identities asked than there are), with the
    # CLI's up-front check out of the way: a Dagster run of the prepare job, as from the UI
    defs = build_definitions(profile="ci", data_dir=str(faces), params_path=str(params), mlflow_uri=mlflow_uri,
                             progress=False, overrides=json.dumps({"data": {"min_identities": 41}}))
    result = defs.resolve_job_def("prepare").execute_in_process(instance=dg.DagsterInstance.get(),
                                                                raise_on_error=False)
    assert not result.success
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "data_quality"]
    assert not check.passed
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    meta = failure.event_specific_data.user_failure_data.metadata
    assert "too few identities" in meta["problem"].text
    docs = Path(meta["fix"].text.split("Data Docs of the refused set: ")[1].split(")")[0])
    assert docs.is_file() and workdir / "staging" in docs.parents           # kept for the user, not published
    assert snapshot(workdir / "store", reports) == before and registry(mlflow_uri) == aliases

    # a newer dataset stored by face_dataset alone (as from the UI) never meets the older splits:
    # the defense job refuses instead of computing on a mix
    (faces / "s11" / "10.pgm").unlink()
    defs = build_definitions(profile="ci", data_dir=str(faces), params_path=str(params), mlflow_uri=mlflow_uri,
                             progress=False)
    instance = dg.DagsterInstance.get()
    only = defs.resolve_job_def("prepare").execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey("face_dataset")])
    assert only.success
    mixed = defs.resolve_job_def("defend_and_attack").execute_in_process(
        instance=instance, partition_key="baseline", raise_on_error=False,
        asset_selection=[dg.AssetKey("protected_system")])
    assert not mixed.success
    (failure,) = [e for e in mixed.all_events if e.event_type_value == "STEP_FAILURE"]
    problem = failure.event_specific_data.user_failure_data.metadata["problem"].text
    assert problem.startswith("inputs come from different datasets: face_dataset from dataset version ")
    assert f"dataset_splits from dataset version {metrics['dataset']['version']}" in problem
    assert registry(mlflow_uri) == aliases


def test_too_few_identities_a_missing_folder_and_a_bad_params_file_are_refused_before_any_run(
        tmp_path, att_faces_dir, env, dagster_home):
    few = orl_copy(att_faces_dir, tmp_path / "few", identities=3)
    params = params_file(tmp_path)
    out = privface("run", "--profile", "ci", "--params", str(params), "--data-dir", str(few), env=env)
    assert out.returncode == 2
    assert last_lines(out, 5) == [
        "privface: the data folder has too few identities",
        f"  folder:  {few}",
        "  problem: 3 identity folder(s); the ci profile needs at least 4 (data.min_identities)",
        "  fix:     add identities, or use a profile or params file with a lower data.min_identities",
        "  nothing was run and nothing stored was changed"]

    out = privface("run", "--profile", "ci", "--params", str(params), "--data-dir", str(tmp_path / "nope"),
                   env=env)
    assert out.returncode == 2 and last_lines(out, 5)[1:3] == [
        f"  file:    {tmp_path / 'nope'}", "  problem: dataset root does not exist"]

    def two_epochs(raw):
        raw["profiles"]["ci"]["baseline"]["train"]["epochs"] = "two"

    bad = params_file(tmp_path, two_epochs, name="bad.yaml")
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "epochs: two" in text)
    out = privface("run", "--profile", "ci", "--params", str(bad), "--data-dir", str(few), env=env)
    assert out.returncode == 2
    assert last_lines(out, 5) == [
        "privface: the params file cannot be used",
        f"  file:    {bad}",
        f"  problem: line {line}: profiles.ci.baseline.train.epochs: expected a valid integer, found 'two'",
        "  fix:     edit the file and run again",
        "  nothing was run and nothing stored was changed"]

    broken = tmp_path / "broken.yaml"
    broken.write_text(params.read_text().replace("defaults:\n", "defaults:\n  seed: [0\n", 1))
    out = privface("run", "--profile", "ci", "--params", str(broken), env=env)
    assert out.returncode == 2 and "problem: line 3, column" in out.stderr and "not valid YAML" in out.stderr
    out = privface("run", "--profile", "nightly", "--params", str(params), env=env)
    assert out.returncode == 2 and "unknown profile 'nightly'; known: ['ci', 'demo', 'paper']" in out.stderr

    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "reports").exists()
    assert dg.DagsterInstance.get().get_runs() == []                     # no Dagster run was started


def test_two_folders_of_one_name_run_at_once_without_sharing_anything(tmp_path, att_faces_dir, env, mlflow_uri):
    good = orl_copy(att_faces_dir, tmp_path / "good" / "faces", identities=40)
    other = orl_copy(att_faces_dir, tmp_path / "other" / "faces", identities=24)
    params = params_file(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--profile", "ci", "--params",
                               str(params), "--data-dir", str(d)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d in (good, other)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    settings = [PrivfaceSettings(profile="ci", data_dir=str(d), params_path=str(params)) for d in (good, other)]
    assert len({s.workdir() for s in settings}) == 2 and len({s.reports_dir() for s in settings}) == 2
    for s, identities in zip(settings, (40, 24)):
        metrics = json.loads((s.reports_dir() / "metrics.json").read_text())
        assert metrics["dataset"]["identities"] == identities
    names = [s.registered_model("baseline") for s in settings]
    assert names[0] != names[1]
    models = registry(mlflow_uri)
    assert all(models[n] == ({"champion": 1}, [1]) for n in names)        # each its own champion


def _closed(dagster_run_prefix: str | None, mlflow_uri: str, since: set[str], timeout: float = 90.0):
    """Wait until the Dagster run started after `since` is CANCELED and none of its MLflow runs
    is RUNNING; returns (run, {asset: MLflow status})."""
    instance = dg.DagsterInstance.get()
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in instance.get_runs() if r.run_id not in since
                and (dagster_run_prefix is None or r.run_id.startswith(dagster_run_prefix))]
        if runs:
            (run,) = runs
            exp = privface_experiment(client)
            ml = {r.data.tags["asset"]: r.info.status for r in client.search_runs(
                [exp.experiment_id], filter_string=f"tags.dagster_run_id = '{run.run_id}'")}
            if run.status == dg.DagsterRunStatus.CANCELED and "RUNNING" not in ml.values():
                return run, ml
        assert time.monotonic() < deadline, f"runs not closed: {[(r.run_id, r.status) for r in runs]}"
        time.sleep(0.5)


def test_ctrl_c_stops_training_within_seconds_and_closes_the_runs(tmp_path, att_faces_dir, env, mlflow_uri,
                                                                 dagster_home):
    faces = orl_copy(att_faces_dir, tmp_path / "faces", identities=12)

    def long_training(raw):   # minutes of training: only an interrupt ends it in this test
        raw["profiles"]["ci"]["baseline"]["train"].update(epochs=5000, batch_size=8)

    params = params_file(tmp_path, long_training)
    settings = PrivfaceSettings(profile="ci", data_dir=str(faces), params_path=str(params))
    checkpoints = settings.workdir() / "checkpoints" / "baseline"
    log = tmp_path / "cli.log"
    # one Ctrl-C; two at once; the supervisor killed (its terminal gone): each ends the training,
    # keeps the checkpoint and closes the runs; the next run resumes from the checkpoint
    for how in ("ctrl-c", "ctrl-c twice", "supervisor killed"):
        before = {r.run_id for r in dg.DagsterInstance.get().get_runs()}
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--profile", "ci", "--params",
                                     str(params), "--data-dir", str(faces)], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                while not (list(checkpoints.glob("*/last.pt")) and "epoch " in log.read_text()):   # training
                    assert proc.poll() is None, log.read_text()[-3000:]
                    time.sleep(0.1)
                time.sleep(0.5)
                pressed = time.monotonic()
                if how == "supervisor killed":
                    proc.send_signal(signal.SIGKILL)
                else:
                    for _ in range(how.count("ctrl-c") + how.count("twice")):
                        proc.send_signal(signal.SIGINT)
                        time.sleep(0.05)
                code = proc.wait(timeout=120)
                stopped_after = time.monotonic() - pressed
            finally:
                if proc.poll() is None:
                    proc.kill()
        text = log.read_text()
        lines = text.rstrip().splitlines()
        if how == "ctrl-c":
            assert code == 130, text[-3000:]
            assert stopped_after < 60, f"took {stopped_after:.0f} s to stop"   # 5000 epochs take far longer
            assert lines[-4] == "privface: interrupted"
            assert lines[-3].startswith("  stopped: prepare (Dagster run ") and lines[-3].endswith(", now CANCELED)")
            prefix = lines[-3].split("Dagster run ")[1][:8]
        elif how == "ctrl-c twice":
            assert code == 130 and stopped_after < 10, (code, stopped_after, text[-3000:])
            assert lines[-1].startswith("privface: stopped at once; the runs are being marked CANCELED / KILLED")
            prefix = None
        else:
            assert code == -signal.SIGKILL
            prefix = None
        run, ml = _closed(prefix, mlflow_uri, before)
        assert ml["baseline"] == "KILLED", (how, ml)
        assert list(checkpoints.glob("*/last.pt"))                        # the last checkpoint is kept
        done = json.loads(json.dumps(run.tags))                           # (a plain dict for the message)
        assert done["privface/trigger"] == "cli"
    deadline = time.monotonic() + 60
    while [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
           .splitlines() if str(params) in line]:                        # no orphaned child or worker
        assert time.monotonic() < deadline, "a child of the interrupted runs is still alive"
        time.sleep(0.5)
