"""DVC for real, in temp git repos: the synthetic data is bit-for-bit reproducible (the
committed data.dvc md5 is regenerated exactly), and the report is a DVC metrics file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import load_params
from components.data.synthetic import SyntheticConfig, write_dataset
from components.reporting.metrics_file import build_metrics, write_json
from tests.integration.conftest import ROOT, git_env

pytestmark = pytest.mark.integration


def sh(*cmd, cwd):
    if cmd[0] == "dvc":   # the venv's dvc, whether or not the venv is on PATH
        cmd = (sys.executable, "-m", "dvc", *cmd[1:])
    out = subprocess.run(cmd, cwd=cwd, env=git_env(), capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    sh("git", "init", "-q", cwd=path)
    sh("dvc", "init", "-q", cwd=path)
    sh("dvc", "config", "core.analytics", "false", cwd=path)
    return path


def dvc_md5(dvc_file: Path) -> str:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def test_regenerated_demo_dataset_has_the_committed_md5(tmp_path):
    params = load_params(ROOT / "params.yaml", "demo")
    repo = new_repo(tmp_path / "repo")
    write_dataset(repo / params["data"]["dir"], SyntheticConfig(**params["data"]["synthetic"]), progress=False)
    sh("dvc", "add", "-q", "data", cwd=repo)
    assert dvc_md5(repo / "data.dvc") == dvc_md5(ROOT / "data.dvc")
    # and DVC sees nothing changed against its own record
    assert "up to date" in sh("dvc", "status", "data.dvc", cwd=repo).lower()


def test_a_changed_dataset_changes_the_md5(tmp_path):
    repo = new_repo(tmp_path / "repo")
    write_dataset(repo / "data" / "synthetic", SyntheticConfig(identities=4, images_per_identity=3, size=32),
                  progress=False)
    sh("dvc", "add", "-q", "data", cwd=repo)
    before = dvc_md5(repo / "data.dvc")
    write_dataset(repo / "data" / "extra", SyntheticConfig(identities=2, images_per_identity=3, size=32, seed=5),
                  progress=False)
    assert "modified" in sh("dvc", "status", "data.dvc", cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    assert dvc_md5(repo / "data.dvc") != before


def _metrics(acc: float) -> dict:
    utility = {"verification_accuracy": acc, "verification_std": 0.01, "tar_at_far_1e-3": 0.4, "eer": 0.1,
               "rank1": 0.7}
    return build_metrics({"name": "t", "version": "v", "identities": 2, "images": 4},
                         {"baseline": {"params": {}, "utility": utility, "attacks": {}, "mlflow": {}}})


def test_dvc_metrics_show_and_diff_read_the_report(tmp_path):
    repo = new_repo(tmp_path / "repo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    write_json(_metrics(0.91), repo / "reports" / "metrics.json")
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo))
    flat = json.dumps(shown)
    assert "verification_accuracy" in flat and "0.91" in flat
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "first", cwd=repo)
    write_json(_metrics(0.87), repo / "reports" / "metrics.json")
    diff = json.loads(sh("dvc", "metrics", "diff", "--json", cwd=repo))
    entry = diff["reports/metrics.json"]["defenses.baseline.utility.verification_accuracy"]
    assert entry["old"] == pytest.approx(0.91) and entry["new"] == pytest.approx(0.87)
