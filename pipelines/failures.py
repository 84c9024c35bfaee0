"""What a user reads when a run fails: one short block (where, which file or key, what is
wrong, what to do) instead of Dagster's stack traces, which go to a log file whose path
the block names. Built from the run's events: a refusal (pipelines/refusals.py) carries
its file, problem and fix as metadata; anything else is shown by its innermost cause."""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
from pathlib import Path


def block(title: str, lines: list[tuple[str, str]], footer: str = "") -> str:
    """ "privface: <title>" then aligned "  key: value" lines, one line each (paths stay
    whole, for copying; the terminal wraps)."""
    width = max((len(k) for k, _ in lines), default=0) + 1
    out = [f"privface: {title}"]
    for key, value in lines:
        out.append(f"  {key + ':':<{width}} {' '.join(str(value).split())}")
    if footer:
        out.append(f"  {footer}")
    return "\n".join(out)


def _text(value) -> str:
    return str(getattr(value, "value", getattr(value, "text", value)))


def _innermost(error):
    while error is not None and (error.cause is not None or error.context is not None):
        error = error.cause or error.context
    return error


INTERRUPTS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


def _chain(error):
    """An error and every error it was raised from or while handling."""
    seen = []
    stack = [error]
    while stack:
        e = stack.pop()
        if e is not None and all(e is not s for s in seen):
            seen.append(e)
            stack += [e.cause, e.context]
    return seen


def was_interrupted(result) -> bool:
    """Whether a step failed because of Ctrl-C / SIGTERM, even where the interrupt landed in
    code that then failed otherwise (an interrupted torch.save raises a RuntimeError)."""
    return any(e.cls_name in INTERRUPTS for ev in result.all_events if ev.event_type_value == "STEP_FAILURE"
               for e in _chain(ev.event_specific_data.error))


def stored_in(result) -> list[str]:
    """The assets (with partition) a run stored before it ended."""
    out = []
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            m = e.event_specific_data.materialization
            out.append(m.asset_key.to_user_string() + (f"[{m.partition}]" if m.partition else ""))
    return out


def failure_lines(result) -> tuple[str, list[tuple[str, str]], bool]:
    """(where, [(key, value)], refused) for a failed `execute_in_process` result; `refused`
    when the failure is a refusal of bad input."""
    steps = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    failed_checks = [c for c in result.get_asset_check_evaluations() if not c.passed]
    if not steps:
        return "the run", [("problem", "the run failed before any step ran (see the log)")], False
    event = steps[0]
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    meta = dict(user.metadata) if user is not None and user.metadata else {}
    where = event.step_key or "a step"
    if "problem" in meta:
        lines = [(k, _text(meta[k])) for k in ("file", "problem", "fix") if k in meta]
        return where, lines, True
    if data.error is not None and data.error.cls_name == "DagsterAssetCheckFailedError" and failed_checks:
        lines = [(f"check {c.check_name}", "; ".join(f"{k}: {_text(v)}" for k, v in c.metadata.items())[:600])
                 for c in failed_checks]
        return where, lines + [("fix", "see the check's metadata in the Dagster UI (`make ui`)")], False
    cause = _innermost(data.error)
    message = (cause.message if cause is not None else "unknown error").strip()
    name = cause.cls_name if cause is not None else "Error"
    lines = [("problem", f"{name}: {message.splitlines()[-1] if message else ''}"[:600])]
    if len(steps) > 1:
        lines.append(("also failed", ", ".join(e.step_key for e in steps[1:])))
    return where, lines + [("fix", "not a known input problem: the log has the stack trace")], False


def write_run_log(instance, run_id: str, path: Path, title: str) -> None:
    """Append the Dagster event log of one run (every event, stack traces in full) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"===== {title} (Dagster run {run_id}) =====\n")
        for rec in instance.all_logs(run_id):
            when = dt.datetime.fromtimestamp(rec.timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            event = rec.dagster_event
            kind = event.event_type_value if event is not None else "LOG"
            fh.write(f"{when} {logging.getLevelName(rec.level):<7} {rec.step_key or '-'} {kind}: "
                     f"{rec.user_message}\n")
            error = getattr(getattr(event, "event_specific_data", None), "error", None) if event else None
            if error is not None:
                fh.write(textwrap.indent(error.to_string(), "    ") + "\n")
