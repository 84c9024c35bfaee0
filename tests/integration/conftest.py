"""Shared set-up of the integration tests: a ci-profile synthetic dataset in a temp dir,
a temp DAGSTER_HOME with a real instance, and a temp sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.config import load_params
from components.data.synthetic import SyntheticConfig, write_dataset

ROOT = Path(__file__).resolve().parents[2]
# DVC's own environment (the Makefile makes it; PRIVFACE_DVC names another dvc executable)
DVC = Path(os.environ.get("PRIVFACE_DVC") or ROOT / ".venv-dvc" / "bin" / "dvc")


def dvc_executable() -> str:
    if not os.access(DVC, os.X_OK):
        pytest.fail(f"{DVC}: no dvc here; `make install` creates DVC's environment .venv-dvc")
    return str(DVC)


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


def params_file(tmp_path: Path, edit=None, name: str = "params.yaml") -> Path:
    """A copy of the project's params.yaml in `tmp_path` whose stores and reports live under
    `tmp_path` (so runs with the default, dataset-keyed locations never write into the
    repository), after `edit(raw)` changed the parsed YAML in place."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["defaults"]["workdir"] = str(tmp_path / "artifacts" / "{profile}")
    raw["defaults"]["reports_dir"] = str(tmp_path / "reports")
    for profile in raw["profiles"].values():
        if profile:
            profile.pop("workdir", None)
    if edit is not None:
        edit(raw)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def orl_copy(att_faces_dir: Path, dest: Path, identities: int = 40) -> Path:
    """A writable copy of the first `identities` ORL identities (s1..sN) at `dest`."""
    import shutil

    dest.mkdir(parents=True)
    for i in range(1, identities + 1):
        shutil.copytree(att_faces_dir / f"s{i}", dest / f"s{i}")
    return dest


def registered(defense: str, data_dir: Path | None = None, profile: str = "ci") -> str:
    """The registry name the pipeline gives `defense`'s models on that data (keyed by dataset)."""
    from pipelines.resources import PrivfaceSettings

    return PrivfaceSettings(profile=profile, data_dir=str(data_dir or "")).registered_model(defense)


def privface_experiment(client):
    """The one MLflow experiment a test's store holds (named per dataset and profile:
    params' mlflow.experiment)."""
    found = [e for e in client.search_experiments() if e.name.startswith("privface-")]
    assert len(found) == 1, [e.name for e in found]
    return found[0]
