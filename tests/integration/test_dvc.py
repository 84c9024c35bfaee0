"""DVC for real, in temp git repos: the synthetic data is bit-for-bit reproducible (the
committed data.dvc md5 is regenerated exactly), and the report is a DVC metrics file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.config import load_params
from components.data.synthetic import SyntheticConfig, write_dataset
from components.reporting.metrics_file import build_metrics, write_json
from tests.integration.conftest import ROOT, dvc_executable, git_env

pytestmark = pytest.mark.integration


def sh(*cmd, cwd):
    if cmd[0] == "dvc":   # DVC's own environment, whether or not it is on PATH
        cmd = (dvc_executable(), *cmd[1:])
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


# What the report needs, without the promotion stage (a worse second model is rightly not
# promoted, which is not what this test is about).
REPORT_ASSETS = ("face_dataset", "dataset_splits", "baseline_fr_model", "evaluation_fr_model", "protected_system",
                 "attack_results", "defense_sweep", "privacy_utility_report")
# Shorter attacks than the ci profile's, in both runs, to keep two whole runs near a minute each.
QUICK_ATTACKS = {"template_inversion": {"epochs": 1}, "representation_recovery": {"epochs": 1},
                 "model_inversion": {"steps": 10}}


def _report_run(tmp_path, ci_data, mlflow_uri, reports: Path, epochs: int) -> dict:
    """One real ci-profile Dagster run up to the report, the baseline trained for `epochs`."""
    import dagster as dg

    from pipelines.definitions import build_definitions

    overrides = {"baseline": {"train": {"epochs": epochs}}, "attacks": QUICK_ATTACKS}
    defs = build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                             reports_dir=str(reports), mlflow_uri=mlflow_uri, progress=False,
                             overrides=json.dumps(overrides))
    result = defs.resolve_job_def("full_pipeline").execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key="baseline", raise_on_error=False,
        asset_selection=[dg.AssetKey(k) for k in REPORT_ASSETS])
    assert result.success, [e.event_specific_data.error.to_string() for e in result.all_events
                            if e.event_type_value == "STEP_FAILURE"]
    return json.loads((reports / "metrics.json").read_text())


def _leaves(obj, prefix="") -> dict:
    """The values of a JSON document by dotted path, as DVC names metrics (DVC compares
    scalars: lists such as the `ci95` intervals are not metrics to it)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {} if isinstance(obj, list) else {prefix[:-1]: obj}


def test_dvc_metrics_diff_shows_what_two_runs_with_different_params_changed(tmp_path, ci_data, dagster_home,
                                                                            mlflow_uri):
    repo = new_repo(tmp_path / "repo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    metrics_file = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pipeline"]["metrics"][0]
    declared = next(iter(metrics_file))             # the path dvc.yaml declares, relative to the repo root
    reports = repo / Path(declared).parent
    first = _report_run(tmp_path, ci_data, mlflow_uri, reports, epochs=2)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "report of the 2-epoch baseline", cwd=repo)
    second = _report_run(tmp_path, ci_data, mlflow_uri, reports, epochs=4)

    old, new = _leaves(first), _leaves(second)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    assert any(k.startswith("defenses.baseline.utility.") for k in changed), "retraining changed no utility figure"
    diff = json.loads(sh("dvc", "metrics", "diff", "--json", cwd=repo))[declared]
    assert set(diff) == changed                     # every changed figure (and MLflow id), and only those
    for key, entry in diff.items():
        assert (entry["old"], entry["new"]) == (pytest.approx(old[key]), pytest.approx(new[key])), key
        if isinstance(old[key], float):
            assert entry["diff"] == pytest.approx(new[key] - old[key]), key
    assert diff["defenses.baseline.mlflow.model_version"] == {"old": "1", "new": "2"}   # a new registered version


def test_dvc_repro_reads_the_pipeline_stage(tmp_path):
    """dvc.yaml's stage, its deps and params resolve under DVC's own environment, and the
    command it would run is the project's CLI (a dry run: the real one is `make demo`)."""
    repo = new_repo(tmp_path / "repo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pipeline"]
    for dep in stage["deps"]:
        (repo / dep).mkdir()
        (repo / dep / "placeholder").write_text(dep)
    out = sh("dvc", "repro", "--dry", cwd=repo)
    assert "Running stage 'pipeline'" in out and stage["cmd"] in out, out
