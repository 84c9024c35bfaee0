"""Telemetry of Dagster, MLflow, DVC and Great Expectations off, before any of them loads."""

import os

OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "yes",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


def disable_telemetry() -> None:
    for key, value in OFF.items():
        os.environ.setdefault(key, value)


disable_telemetry()
