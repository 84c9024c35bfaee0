"""The Dagster `Definitions` of privface (`dagster dev -m pipelines.definitions`).

Resources come from environment variables so that the UI, the CLI and the tests build
the same graph: PRIVFACE_PROFILE (ci | demo | paper), PRIVFACE_DATA_DIR (a folder of
identity sub-folders), PRIVFACE_DEFENSES (comma list), PRIVFACE_WORKDIR,
PRIVFACE_REPORTS_DIR, MLFLOW_TRACKING_URI, PRIVFACE_DEVICE (auto | cpu | cuda),
PRIVFACE_PARAMS (another params file than the project's params.yaml)."""

from __future__ import annotations

import os

from pipelines import telemetry  # noqa: F401  (before dagster, mlflow, dvc, gx)

import dagster as dg  # noqa: E402

from pipelines.assets.attack_assets import attack_results  # noqa: E402
from pipelines.assets.data_assets import dataset_splits, face_dataset  # noqa: E402
from pipelines.assets.model_assets import baseline_fr_model, evaluation_fr_model, protected_system  # noqa: E402
from pipelines.assets.promotion_assets import promotion_candidates, registered_model  # noqa: E402
from pipelines.assets.report_assets import privacy_utility_report  # noqa: E402
from pipelines.assets.sweep_assets import defense_sweep  # noqa: E402
from pipelines.automation import data_change_sensor, weekly_retraining  # noqa: E402
from pipelines.checks import ALL_CHECKS  # noqa: E402
from pipelines.code_versions import with_code_versions  # noqa: E402
from pipelines.jobs import ALL_JOBS  # noqa: E402
from pipelines.resources import PROJECT_ROOT, build_resources  # noqa: E402

ASSETS = [face_dataset, dataset_splits, baseline_fr_model, evaluation_fr_model, protected_system, defense_sweep,
          attack_results, privacy_utility_report, promotion_candidates, registered_model]


def build_definitions(**resource_kwargs) -> dg.Definitions:
    """The project's Definitions for one configuration; each asset's code version is the
    digest of its code and of the params it reads (pipelines/code_versions.py)."""
    resources = build_resources(**resource_kwargs)
    assets = with_code_versions(ASSETS, resources["settings"].params())
    return dg.Definitions(assets=assets, asset_checks=ALL_CHECKS, jobs=ALL_JOBS,
                          schedules=[weekly_retraining], sensors=[data_change_sensor], resources=resources)


defs = build_definitions(
    profile=os.environ.get("PRIVFACE_PROFILE", "demo"),
    data_dir=os.environ.get("PRIVFACE_DATA_DIR", ""),
    defenses=os.environ.get("PRIVFACE_DEFENSES", ""),
    workdir=os.environ.get("PRIVFACE_WORKDIR", ""),
    reports_dir=os.environ.get("PRIVFACE_REPORTS_DIR", ""),
    mlflow_uri=os.environ.get("MLFLOW_TRACKING_URI", ""),
    device=os.environ.get("PRIVFACE_DEVICE", "auto"),
    params_path=os.environ.get("PRIVFACE_PARAMS", ""),
)
__all__ = ["defs", "build_definitions", "build_resources", "ASSETS", "PROJECT_ROOT"]
