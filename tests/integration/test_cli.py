"""The `privface` command as a user runs it: a subprocess, a persistent Dagster instance
in a temp DAGSTER_HOME, a temp MLflow store, the ci profile on a generated folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def privface(*args, env):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture()
def env(tmp_path, dagster_home, mlflow_uri):
    return {**os.environ, "DAGSTER_HOME": str(dagster_home), "MLFLOW_TRACKING_URI": mlflow_uri}


def test_run_prints_the_table_and_the_paths_and_leaves_runs_in_the_instance(tmp_path, ci_data, env, dagster_home):
    out = privface("run", "--profile", "ci", "--data-dir", str(ci_data), "--workdir", str(tmp_path / "w"),
                   "--reports-dir", str(tmp_path / "r"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "baseline" in out.stdout and "tar@far=1e-3" in out.stdout
    for label in ("report:", "metrics:", "mlflow store:", "dagster home:"):
        assert label in out.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    acc = metrics["defenses"]["baseline"]["utility"]["verification_accuracy"]
    assert f"{acc:.3f}" in out.stdout
    # the runs persist in the instance the UI would read
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {"prepare", "defend_and_attack", "report"}
    assert all(r.is_success for r in runs)


def test_unknown_defenses_are_refused_before_any_work(tmp_path, ci_data, env):
    out = privface("run", "--profile", "ci", "--data-dir", str(ci_data), "--defenses", "baseline,nope",
                   "--workdir", str(tmp_path / "w"), env=env)
    assert out.returncode == 2 and "unknown defense(s) ['nope']" in out.stderr
    assert "advface" in out.stderr                                       # the known ones are listed
    assert not (tmp_path / "w").exists()


def test_a_corrupt_image_fails_with_the_file_named_in_the_last_lines(tmp_path, env, make_face_folder):
    bad = make_face_folder(tmp_path, n_identities=8, n_images=3, size=(32, 32))
    (bad / "id_0003" / "01.png").write_bytes(b"not an image at all")
    out = privface("run", "--profile", "ci", "--data-dir", str(bad), "--workdir", str(tmp_path / "w"),
                   "--reports-dir", str(tmp_path / "r"), env=env)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-5:]
    assert last[0].startswith("privface: prepare refused the input at face_dataset")
    assert last[1].split() == ["file:", str(bad / "id_0003" / "01.png")]
    assert last[2].startswith("  problem: cannot be read as an image: not a recognised image format")
    assert last[3].startswith("  fix:")
    assert last[4].startswith("  nothing stored was changed; full log: ")
    log = Path(last[4].split("full log: ")[1])
    assert "Traceback" not in out.stderr and "DataError" in log.read_text()   # the trace is in the log only
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_study_runs_each_seed_and_reports_mean_and_spread(tmp_path, ci_data, env):
    """`privface study`: one supervised run per seed (seed 0 the profile as it is, seed 1
    retrained with other seeds, registered under its own prefix), then mean ± sd per defense."""
    out = privface("study", "--seeds", "2", "--profile", "ci", "--data-dir", str(ci_data),
                   "--workdir", str(tmp_path / "w"), "--reports-dir", str(tmp_path / "r"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    study = json.loads((tmp_path / "r" / "study" / "study.json").read_text())
    seeds = [json.loads((tmp_path / "r" / "study" / f"seed{k}" / "metrics.json").read_text()) for k in (0, 1)]
    assert study["seeds"] == 2 and len(study["minutes_per_seed"]) == 2
    acc = [s["defenses"]["baseline"]["utility"]["verification_accuracy"] for s in seeds]
    row = next(r for r in study["rows"] if r["defense"] == "baseline" and r["figure"] == "accuracy")
    assert row["values"] == acc and row["mean"] == pytest.approx(sum(acc) / 2)
    assert acc[0] != acc[1]                         # another seed trained another model
    assert (tmp_path / "w-seed1").is_dir() and "| baseline |" in out.stdout
    import mlflow

    names = {m.name for m in mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_registered_models()}
    assert any("-seed1-" in n for n in names) and any("-seed1-" not in n for n in names)
