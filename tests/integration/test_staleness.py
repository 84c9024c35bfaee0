"""Dagster's staleness on a real instance: every asset has a code version made of its code
and the params it reads, and the dataset's data version is its digest; a params change
marks the assets that read it stale and leaves the others fresh; once such an asset is
rebuilt, its new data version makes its downstream stale."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest   # Dagster's own stand-in for the UI's context

from pipelines.definitions import build_definitions

pytestmark = pytest.mark.integration
KEYS = [dg.AssetKey(k) for k in ("face_dataset", "dataset_splits", "baseline_fr_model")]


def _defs(tmp_path, ci_data, mlflow_uri, overrides: dict | None = None) -> dg.Definitions:
    return build_definitions(profile="ci", data_dir=str(ci_data), workdir=str(tmp_path / "work"),
                             reports_dir=str(tmp_path / "reports"), mlflow_uri=mlflow_uri, progress=False,
                             overrides=json.dumps(overrides or {}))


def _status(defs: dg.Definitions, instance) -> dict[str, StaleStatus]:
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return {k.to_user_string(): resolver.get_status(k) for k in KEYS}


def test_a_params_change_makes_its_readers_stale_then_their_downstream(tmp_path, ci_data, dagster_home, mlflow_uri):
    instance = dg.DagsterInstance.get()
    defs = _defs(tmp_path, ci_data, mlflow_uri)
    graph = defs.resolve_asset_graph()
    assert all(graph.get(k).code_version for k in graph.get_all_asset_keys())   # every asset is versioned
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=KEYS, raise_on_error=False)
    assert result.success
    assert set(_status(defs, instance).values()) == {StaleStatus.FRESH}
    record = instance.get_latest_materialization_event(dg.AssetKey("face_dataset")).asset_materialization
    info = result.output_for_node("dataset_splits")["info"].iloc[0]
    assert record.tags["dagster/data_version"] == str(info["version"])   # outside data/: the content version

    moved = _defs(tmp_path, ci_data, mlflow_uri, {"data": {"pairs": {"seed": 7}}})   # only the splits read it
    status = _status(moved, instance)
    assert (status["face_dataset"], status["dataset_splits"]) == (StaleStatus.FRESH, StaleStatus.STALE), status
    # rebuilt under the new params, the splits carry a new data version: now the model trained
    # on the old splits is stale, and nothing else
    assert moved.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("dataset_splits")], raise_on_error=False).success
    status = _status(moved, instance)
    assert status == {"face_dataset": StaleStatus.FRESH, "dataset_splits": StaleStatus.FRESH,
                      "baseline_fr_model": StaleStatus.STALE}, status
    trained = _defs(tmp_path, ci_data, mlflow_uri, {"baseline": {"train": {"epochs": 3}}})
    status = _status(trained, instance)   # the original pairs again: the splits too differ from their record
    assert status["face_dataset"] == StaleStatus.FRESH and status["baseline_fr_model"] == StaleStatus.STALE, status
