"""Shared set-up of the integration tests: a ci-profile synthetic dataset in a temp dir,
a temp DAGSTER_HOME with a real instance, and a temp sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import load_params
from components.data.synthetic import SyntheticConfig, write_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ci_params() -> dict:
    return load_params(ROOT / "params.yaml", "ci")


@pytest.fixture(scope="session")
def ci_data(tmp_path_factory, ci_params) -> Path:
    out = tmp_path_factory.mktemp("ci-data") / "synthetic-ci"
    write_dataset(out, SyntheticConfig(**ci_params["data"]["synthetic"]), progress=False)
    return out


@pytest.fixture()
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def git_env() -> dict:
    """Author identity for commits made in temp repos, without touching global config."""
    env = dict(os.environ)
    env.update({"GIT_AUTHOR_NAME": "privface tests", "GIT_AUTHOR_EMAIL": "tests@privface.local",
                "GIT_COMMITTER_NAME": "privface tests", "GIT_COMMITTER_EMAIL": "tests@privface.local"})
    return env
