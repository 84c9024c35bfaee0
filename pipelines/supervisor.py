"""`privface run` as a supervisor: the stages run in a child process of their own session,
and this process owns Ctrl-C and SIGTERM.

Why a child: inside `execute_in_process` Dagster owns SIGINT, and a stuck step (a C call,
a busy store, worker pools) can outlive an interrupt by minutes. Here the first signal is
passed to the child, where Dagster stops the step at its next Python instruction (epoch
checkpoints are already on disk); if the child has not ended GRACE_S seconds later, or on
a second signal, its whole process group is killed. Then the runs are closed as a user
expects after Ctrl-C: the Dagster run CANCELED, MLflow runs left RUNNING marked KILLED,
the event log written to the run's log file."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pipelines.failures import block

GRACE_S = 20.0   # seconds from the first signal to a forced stop
INTERRUPTED = 130


def _log_path(settings, session: str) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return settings.workdir() / "logs" / f"run-{stamp}-{session[:8]}.log"


def _say(text: str) -> None:
    with contextlib.suppress(OSError):   # the terminal may be gone (SIGHUP)
        print(text, file=sys.stderr, flush=True)


def supervise(args, settings) -> int:
    """Run the stages in a supervised child; its exit code, or 130 when interrupted."""
    from pipelines.cli import CHILD_ENV, CLOSE_ENV, LOG_ENV, ensure_dagster_home

    ensure_dagster_home()   # the child and the clean-up use the same instance
    session = uuid.uuid4().hex
    log = _log_path(settings, session)
    env = {**os.environ, CHILD_ENV: session, LOG_ENV: str(log)}
    command = [sys.executable, "-m", "pipelines.cli", *args.argv]
    state = {"signals": 0, "deadline": None, "child": None}

    def on_signal(signum, _frame):
        state["signals"] += 1
        child = state["child"]
        if state["signals"] == 1:
            _say(f"\nprivface: stopping (signal {signal.Signals(signum).name}); the last checkpoint is kept. "
                 "Press Ctrl-C again to stop at once.")
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGINT)   # Dagster's interrupt: the step ends, runs are closed
            state["deadline"] = time.monotonic() + GRACE_S
            return
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        # closing the runs takes seconds (MLflow, Dagster): a detached process does it
        subprocess.Popen(command, env={**env, CLOSE_ENV: session}, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _say(f"privface: stopped at once; the runs are being marked CANCELED / KILLED in the background "
             f"(log: {log})")
        os._exit(INTERRUPTED)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}   # before the child exists: no gap
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
        state["child"] = child
        if state["signals"]:   # a signal came while it was starting
            os.kill(child.pid, signal.SIGINT)
        while True:
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if state["deadline"] is not None and time.monotonic() > state["deadline"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
        if not state["signals"]:
            return code
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)   # workers the child left behind
        closed = close_interrupted_runs(session, settings, log)
        lines = [("stopped", ", ".join(closed) or "before any Dagster run started"),
                 ("kept", "every stored value and the checkpoints of finished epochs: the same command "
                          "resumes from them"),
                 ("log", str(log))]
        _say(block("interrupted", lines))
        return INTERRUPTED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def watch_parent(on_orphaned) -> None:
    """In the child: when the supervisor is gone (its terminal closed, or it was killed),
    interrupt this process as Ctrl-C would, and end it if that does not within GRACE_S."""
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        on_orphaned()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(GRACE_S)
        os._exit(INTERRUPTED)

    threading.Thread(target=watch, name="privface-parent-watch", daemon=True).start()


def close_interrupted_runs(session: str, settings, log: Path) -> list[str]:
    """Mark this session's unfinished Dagster runs CANCELED and their RUNNING MLflow runs
    KILLED; append their event logs to `log`. Returns "job (run id)" of each."""
    import dagster as dg

    from pipelines.failures import write_run_log
    from pipelines.resources import MLflowResource

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"privface/session": session}))
    unfinished = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    if not unfinished:
        return []
    params = settings.params()
    tracking = MLflowResource(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"],
                              experiment=settings.experiment())
    client = tracking.client()
    experiment = client.get_experiment_by_name(settings.experiment())
    closed = []
    for run in unfinished:
        if run.status != dg.DagsterRunStatus.CANCELED:
            instance.report_run_canceled(run, message="privface: interrupted (Ctrl-C or SIGTERM)")
        if experiment is not None:
            for mlrun in client.search_runs([experiment.experiment_id],
                                            filter_string=f"tags.dagster_run_id = '{run.run_id}'"):
                if mlrun.info.status == "RUNNING":
                    client.set_terminated(mlrun.info.run_id, "KILLED")
        with contextlib.suppress(Exception):   # the log is a courtesy; never fail the clean-up on it
            if not log.is_file() or run.run_id not in log.read_text(encoding="utf-8"):   # the child was killed
                write_run_log(instance, run.run_id, log, f"{run.job_name} (interrupted)")
        partition = run.tags.get("dagster/partition")
        label = f"{run.job_name}[{partition}]" if partition else run.job_name
        closed.append(f"{label} (Dagster run {run.run_id[:8]}, now CANCELED)")
    return closed
