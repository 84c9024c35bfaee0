"""The `privface` command as a user runs it: a subprocess, a persistent Dagster instance
in a temp DAGSTER_HOME, a temp MLflow store, the ci profile on a generated folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_a_bad_dataset_fails_with_the_file_named(tmp_path, env):
    bad = tmp_path / "faces"
    (bad / "alice").mkdir(parents=True)
    (bad / "bob").mkdir()
    for person in ("alice", "bob"):
        for i in range(2):
            (bad / person / f"{i}.png").write_bytes(b"not an image at all")
    out = privface("run", "--profile", "ci", "--data-dir", str(bad), "--workdir", str(tmp_path / "w"),
                   "--reports-dir", str(tmp_path / "r"), env=env)
    assert out.returncode == 1
    assert "alice/0.png" in out.stderr and "image" in out.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()
