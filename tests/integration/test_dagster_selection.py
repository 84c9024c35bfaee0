"""Dagster's selection strings on the project's graph, through the Python API and through
Dagster's own command line: the antlr4 runtime of the project's environment must be the one
Dagster's selection grammar needs (DVC, whose hydra-core pins an older one, has its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_selection_strings_resolve_on_the_project_graph():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    assert dg.AssetSelection.from_string("protected_system").resolve(graph) == {dg.AssetKey("protected_system")}
    downstream = dg.AssetSelection.from_string("key:protected_system+").resolve(graph)
    assert {dg.AssetKey("protected_system"), dg.AssetKey("attack_results")} <= downstream
    assert dg.AssetKey("face_dataset") not in downstream
    upstream = dg.AssetSelection.from_string("+key:dataset_splits").resolve(graph)
    assert upstream == {dg.AssetKey("face_dataset"), dg.AssetKey("dataset_splits")}


def test_dagster_cli_materializes_a_selection(tmp_path, ci_data, dagster_home, mlflow_uri):
    env = {**os.environ, "PRIVFACE_PROFILE": "ci", "PRIVFACE_DATA_DIR": str(ci_data),
           "PRIVFACE_WORKDIR": str(tmp_path / "work"), "PRIVFACE_REPORTS_DIR": str(tmp_path / "reports")}
    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run([str(dagster), "asset", "materialize", "-m", "pipelines.definitions",
                          "--select", "face_dataset"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("face_dataset"))
    assert event is not None and event.asset_materialization.metadata


def test_dg_check_defs_loads_the_project(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DAGSTER_DISABLE_TELEMETRY": "yes"}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run([str(Path(sys.executable).parent / "dg"), "check", "defs"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "All definitions loaded successfully" in out.stdout + out.stderr


def test_the_project_environment_has_no_broken_requirements():
    """`pip check`: nothing in the project's environment pins what another package refuses
    (the antlr4 conflict that DVC brought in)."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
