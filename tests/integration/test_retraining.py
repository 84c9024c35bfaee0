"""Retraining, proven end to end: new identities added to a DVC-tracked data folder make the
data_change_sensor ask for exactly one run per defense for the new md5 (and none once it
has seen it), and re-materializing one defense partition retrains that defense only."""

from __future__ import annotations

import collections
import shutil

import dagster as dg
import mlflow
import pytest

from pipelines.automation import data_change_sensor
from pipelines.definitions import defs as project_defs
from pipelines.resources import PrivfaceSettings
from tests.integration.test_dvc import dvc_md5, new_repo, sh
from tests.integration.test_pipeline_e2e import failures, pipeline  # noqa: F401  (pipeline: a fixture)
from tests.integration.conftest import privface_experiment

pytestmark = pytest.mark.integration

RUN_LIST = ["baseline", "advface"]


def evaluate(settings: PrivfaceSettings, cursor: str | None):
    return data_change_sensor.evaluate_tick(dg.build_sensor_context(
        cursor=cursor, resources={"settings": settings}, repository_def=project_defs.get_repository_def()))


def test_added_identities_request_one_retraining_per_defense_once(tmp_path, make_face_folder):
    repo = new_repo(tmp_path / "repo")
    make_face_folder(repo, n_identities=3, n_images=2, name="data", seed=0)
    sh("dvc", "add", "-q", "data", cwd=repo)
    settings = PrivfaceSettings(profile="ci", defenses=",".join(RUN_LIST), dvc_file=str(repo / "data.dvc"))
    old = dvc_md5(repo / "data.dvc")

    first = evaluate(settings, None)                        # a new sensor starts watching
    assert not first.run_requests and first.cursor == old
    assert not evaluate(settings, old).run_requests          # nothing changed

    extra = make_face_folder(tmp_path, n_identities=2, n_images=2, name="extra", prefix="new_", seed=1)
    for identity in sorted(extra.iterdir()):
        shutil.move(str(identity), repo / "data" / identity.name)
    assert not evaluate(settings, old).run_requests          # data.dvc still records the old md5
    sh("dvc", "add", "-q", "data", cwd=repo)
    new = dvc_md5(repo / "data.dvc")
    assert new != old

    tick = evaluate(settings, old)
    requests = tick.run_requests
    assert [r.partition_key for r in requests] == RUN_LIST    # exactly one run per defense of the run list
    assert [r.run_key for r in requests] == [f"data-{new}-{d}" for d in RUN_LIST]
    assert all(r.tags["privface/data_md5"] == new and r.tags["privface/trigger"] == "data_change"
               for r in requests)
    assert tick.cursor == new
    again = evaluate(settings, tick.cursor)                  # the next tick, with the updated cursor
    assert not again.run_requests and again.cursor == new and "unchanged" in again.skip_message


def _count_by_partition(instance, asset: str) -> collections.Counter:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
    return collections.Counter(r.partition_key for r in records)


def _mlflow_runs(client, partition: str) -> int:
    exp = privface_experiment(client)
    return len(client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.asset = 'protected_system' and tags.partition = '{partition}'"))


def test_rematerializing_one_defense_partition_leaves_the_others_alone(pipeline, mlflow_uri):  # noqa: F811
    defs, instance, _ = pipeline
    prepared = defs.resolve_job_def("prepare").execute_in_process(instance=instance, raise_on_error=False)
    assert prepared.success, failures(prepared)
    defend = defs.resolve_job_def("defend_and_attack")

    def build(partition: str):
        result = defend.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False,
                                           asset_selection=[dg.AssetKey("protected_system")])
        assert result.success, failures(result)

    for partition in RUN_LIST:
        build(partition)
    client = mlflow.MlflowClient(mlflow_uri, mlflow_uri)
    assert _count_by_partition(instance, "protected_system") == {"baseline": 1, "advface": 1}
    assert {p: _mlflow_runs(client, p) for p in RUN_LIST} == {"baseline": 1, "advface": 1}

    build("baseline")
    assert _count_by_partition(instance, "protected_system") == {"baseline": 2, "advface": 1}
    assert {p: _mlflow_runs(client, p) for p in RUN_LIST} == {"baseline": 2, "advface": 1}
    for upstream in ("baseline_fr_model", "evaluation_fr_model"):   # nor is anything upstream trained again
        assert sum(_count_by_partition(instance, upstream).values()) == 1
