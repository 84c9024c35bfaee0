"""One pipeline run in a process of its own, for test_concurrency: `python -m
tests.integration.concurrent_run`. Like `privface run`, it executes real Dagster runs
on the instance in DAGSTER_HOME, with the definitions the UI loads (pipelines.definitions,
configured by PRIVFACE_* and MLFLOW_TRACKING_URI): the `prepare` job, then the baseline's
defended system (protected_system[baseline], which logs and registers a model; the attack
battery is left out to keep the test short). Prints one JSON line with the Dagster run ids;
exits 1 with the step failures on stderr when a run fails."""

from __future__ import annotations

import json
import sys

from pipelines.cli import ensure_dagster_home


def main() -> int:
    ensure_dagster_home()

    import dagster as dg

    from pipelines.definitions import defs

    instance = dg.DagsterInstance.get()
    stages = [("prepare", None, None),
              ("defend_and_attack", "baseline", [dg.AssetKey("protected_system")])]
    run_ids = {}
    for job, partition, selection in stages:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition, asset_selection=selection, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags={"privface/trigger": "concurrency-test"})
        run_ids[job] = result.run_id
        if not result.success:
            for event in result.all_events:
                if event.event_type_value == "STEP_FAILURE":
                    print(f"{event.step_key}: {event.event_specific_data.error.to_string()}", file=sys.stderr)
            print(f"run {result.run_id} of {job} failed", file=sys.stderr)
            return 1
    print(json.dumps(run_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
