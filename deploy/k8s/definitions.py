"""The privface definitions with Dagster's Kubernetes executor: the same assets, jobs,
schedule and sensor as `pipelines.definitions`, every step in its own pod, configured by
run_config.yaml beside this file. Serve it from the user-code deployment with
`dagster api grpc --python-file deploy/k8s/definitions.py` (needs `pip install .[k8s]`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from pipelines.definitions import defs as local_defs

RUN_CONFIG = Path(__file__).with_name("run_config.yaml")

executor = k8s_job_executor.configured(yaml.safe_load(RUN_CONFIG.read_text())["execution"]["config"],
                                       name="privface_k8s")
defs = dg.Definitions.merge(local_defs, dg.Definitions(executor=executor))
