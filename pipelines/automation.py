"""Retraining triggers: a weekly schedule (stopped by default) and a sensor on the md5
recorded in data.dvc. Both request the whole graph for each defense of the run list."""


import dagster as dg

from pipelines.jobs import full_pipeline
from pipelines.resources import PrivfaceSettings, dvc_data_md5

FORCE = {"ops": {"baseline_fr_model": {"config": {"force_retrain": True}},
                 "evaluation_fr_model": {"config": {"force_retrain": True}}}}


@dg.schedule(job=full_pipeline, cron_schedule="0 3 * * 1", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Weekly retraining (Monday 03:00), stopped until an operator starts it.")
def weekly_retraining(context: dg.ScheduleEvaluationContext, settings: PrivfaceSettings):
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(run_key=f"weekly-{stamp}-{d}", partition_key=d, run_config=FORCE,
                          tags={"privface/trigger": "schedule"})
            for d in settings.params()["defenses"]]


@dg.sensor(job=full_pipeline, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrain when the md5 of data/ recorded in data.dvc (settings.dvc_file) changes.")
def data_change_sensor(context: dg.SensorEvaluationContext, settings: PrivfaceSettings):
    md5 = dvc_data_md5(settings.path(settings.dvc_file))
    if md5 == "none":
        return dg.SkipReason("no data.dvc: nothing to watch")
    if context.cursor is None:
        context.update_cursor(md5)
        return dg.SkipReason(f"watching data.dvc (md5 {md5})")
    if md5 == context.cursor:
        return dg.SkipReason(f"data unchanged (md5 {md5})")
    context.update_cursor(md5)
    return [dg.RunRequest(run_key=f"data-{md5}-{d}", partition_key=d,
                          tags={"privface/trigger": "data_change", "privface/data_md5": md5})
            for d in settings.params()["defenses"]]
