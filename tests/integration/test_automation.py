"""Retraining triggers: the weekly schedule (stopped by default) and the data.dvc sensor,
evaluated with Dagster's own test contexts."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from pipelines.automation import data_change_sensor, weekly_retraining
from pipelines.definitions import defs
from pipelines.resources import PrivfaceSettings, dvc_data_md5


def test_schedule_is_weekly_stopped_and_requests_each_defense_of_the_run_list():
    assert weekly_retraining.default_status == dg.DefaultScheduleStatus.STOPPED
    assert weekly_retraining.cron_schedule == "0 3 * * 1"
    settings = PrivfaceSettings(profile="demo", defenses="baseline,advface")
    ctx = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 23, 3, 0),
                                    resources={"settings": settings}, repository_def=defs.get_repository_def())
    requests = list(weekly_retraining.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == ["baseline", "advface"]
    assert [r.run_key for r in requests] == ["weekly-2026-11-23-baseline", "weekly-2026-11-23-advface"]
    job = defs.resolve_job_def(weekly_retraining.job_name)
    for r in requests:
        assert r.tags["privface/trigger"] == "schedule"
        assert r.run_config["ops"]["baseline_fr_model"]["config"]["force_retrain"] is True
        # the forced retraining config is one the job accepts (Dagster validates it as the daemon would)
        assert dg.validate_run_config(job, r.run_config)["ops"]["evaluation_fr_model"]["config"]["force_retrain"]
    # the next week's tick asks again, under new run keys (the daemon dedupes by run key)
    later = weekly_retraining.evaluate_tick(dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 30, 3, 0), resources={"settings": settings},
        repository_def=defs.get_repository_def()))
    assert {r.run_key for r in later.run_requests}.isdisjoint(r.run_key for r in requests)


def test_sensor_requests_one_run_per_new_md5_and_none_when_unchanged():
    settings = PrivfaceSettings(profile="demo", defenses="baseline")
    md5 = dvc_data_md5(settings.path("data.dvc"))
    if md5 == "none":
        pytest.fail("data.dvc must be committed with the md5 of data/")

    repo = defs.get_repository_def()
    first = data_change_sensor.evaluate_tick(dg.build_sensor_context(resources={"settings": settings},
                                                                     repository_def=repo))
    assert not first.run_requests and first.cursor == md5      # starts watching

    same = data_change_sensor.evaluate_tick(dg.build_sensor_context(cursor=md5, resources={"settings": settings},
                                                                    repository_def=repo))
    assert not same.run_requests

    changed = data_change_sensor.evaluate_tick(
        dg.build_sensor_context(cursor="0" * 32 + ".dir", resources={"settings": settings}, repository_def=repo))
    assert [r.partition_key for r in changed.run_requests] == ["baseline"]
    assert changed.run_requests[0].run_key == f"data-{md5}-baseline"
    assert changed.cursor == md5


def test_definitions_hold_the_graph_jobs_schedule_and_sensor():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"face_dataset", "dataset_splits", "baseline_fr_model", "evaluation_fr_model",
                    "protected_system", "defense_sweep", "attack_results", "privacy_utility_report", "promotion_candidates",
                    "registered_model"}
    assert {j for j in ("full_pipeline", "prepare", "defend_and_attack", "report")} <= \
        {j.name for j in defs.resolve_all_job_defs()}
    gate = dg.AssetCheckKey(dg.AssetKey("promotion_candidates"), "promotion_gate")
    assert defs.resolve_asset_graph().get_check_spec(gate).blocking          # stops registered_model when it fails
    assert gate in defs.resolve_job_def("report").asset_layer.asset_graph.asset_check_keys
    part = defs.resolve_assets_def("protected_system").partitions_def
    assert set(part.get_partition_keys()) == {"baseline", "dctdp", "ppfrfd", "hybrid", "facemae", "advface", "dvpf"}
    for training_asset in ("baseline_fr_model", "evaluation_fr_model", "protected_system", "defense_sweep", "attack_results"):
        assert defs.resolve_assets_def(training_asset).op.pool == "gpu"


def test_data_digest_is_the_dvc_md5_where_dvc_tracks_the_data(tmp_path):
    """MLflow's dataset digest: data.dvc's md5 for the profile's data under data/, the content
    version for a user's folder elsewhere."""
    md5 = dvc_data_md5()
    assert md5 != "none" and PrivfaceSettings(profile="demo").data_digest("v1") == md5
    assert PrivfaceSettings(profile="demo", data_dir=str(tmp_path)).data_digest("v1") == "v1"
