"""The `privface` command: the pipeline without the UI, through real Dagster runs on a
persistent instance (DAGSTER_HOME, default ./dagster_home), so the UI shows them too.

  privface run --profile demo [--data-dir DIR] [--defenses a,b] [--device auto] [--params FILE] [--seed K]
  privface study --seeds 3 --profile demo   # `run` per seed, then mean and spread per defense
  privface generate --profile demo     # write the synthetic dataset if it is missing

`run` checks what it can before any work (profile, params file, defense names, the data
folder's structure and identity count), then runs the stages in a child process that it
supervises (pipelines/supervisor.py): Ctrl-C or SIGTERM stops the run within seconds,
keeps the last checkpoint and marks the runs KILLED / CANCELED; a second Ctrl-C stops it
at once. A failure ends with one short block naming the cause; Dagster's own log, stack
traces included, goes to a log file (or to the console with --verbose).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipelines import telemetry  # noqa: F401

from pipelines.failures import block  # noqa: E402
from pipelines.resources import PROJECT_ROOT  # noqa: E402

DAGSTER_YAML = """# privface Dagster instance: no telemetry; one training step at a time in the gpu pool;
# the components' module loggers reach each run's event log
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
python_logs:
  managed_python_loggers:
    - components
  python_log_level: INFO
"""
CHILD_ENV = "PRIVFACE_SESSION"   # set in the supervised child: run the stages here
CLOSE_ENV = "PRIVFACE_CLOSE"     # set in the detached closer after a second Ctrl-C: close that session's runs
LOG_ENV = "PRIVFACE_LOG"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME (default ./dagster_home) with privface's instance config and its sqlite
    storage, created under a file lock: two runs starting at once on a new home would
    otherwise both create the tables and one fail ("table runs already exists")."""
    import dagster as dg
    from filelock import FileLock

    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    with FileLock(home / ".init.lock"):
        cfg = home / "dagster.yaml"
        if not cfg.exists():
            cfg.write_text(DAGSTER_YAML)
        dg.DagsterInstance.get().dispose()
    return home


def _console_logging(level: str) -> None:
    """The components' log records (per-epoch progress of defenses and attacks) on the
    console at `level`, as their progress lines were; Dagster's instance config takes the
    same records into each run's event log."""
    import logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    components = logging.getLogger("components")
    components.setLevel(level)
    components.addHandler(handler)


def _print_table(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from components.reporting.metrics_file import summary_rows

    table = Table(title=f"privface: {metrics['dataset']['name']} "
                        f"({metrics['dataset']['identities']} identities, {metrics['dataset']['images']} images)")
    rows = summary_rows(metrics)
    cols = list(rows[0]) if rows else []
    figures = [c for c in cols if not c.endswith("95% CI")]
    intervals = ["defense"] + [c for c in cols if c.endswith("95% CI")]
    cell = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for c in figures:
        table.add_column(c, justify="left" if c == "defense" else "right")
    for row in rows:
        table.add_row(*[cell(row[c]) for c in figures])
    console = Console(width=180)
    console.print(table)
    print("TI: template inversion, RR: representation recovery, MI: model inversion, MIA: membership "
          "inference, attr gain: attribute probe balanced accuracy above chance; n/a: not run")
    if len(intervals) > 1 and any(row[c] for row in rows for c in intervals[1:]):
        spread = Table(title="95% intervals of the scores (bootstrap over identities)")
        for c in intervals:
            spread.add_column(c, justify="left" if c == "defense" else "right")
        for row in rows:
            spread.add_row(*[cell(row[c]) for c in intervals])
        console.print(spread)


def _gate_refusal(result) -> str:
    """The gate's verdicts when the failed promotion_gate check is the only thing that failed
    in the run (a refusal to promote is an outcome to show, not a pipeline error), else ""."""
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate" and not e.passed]
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    if not gate or any(e.event_specific_data.error.cls_name != "DagsterAssetCheckFailedError" for e in failures):
        return ""
    return "\n".join(f"  {name}: {value.value}" for name, value in gate[0].metadata.items() if name != "passing")


def _settings(args):
    from pipelines.resources import PrivfaceSettings

    kwargs = dict(profile=args.profile, data_dir=args.data_dir or "", defenses=args.defenses or "",
                  workdir_override=args.workdir or "", reports_override=args.reports_dir or "",
                  **({"params_path": str(Path(args.params).resolve())} if args.params else {}))
    settings = PrivfaceSettings(**kwargs)
    if not int(getattr(args, "seed", 0) or 0):   # seed 0 reads nothing here: a bad params file is precheck's
        return settings
    from components.config import ParamsError

    try:
        overrides = _seed_overrides(args, settings)
    except ParamsError:   # precheck reports the params file
        return settings
    return PrivfaceSettings(**kwargs, overrides=overrides)


def _seed_overrides(args, settings) -> str:
    """The params overrides (JSON) of `--seed K` (components.reporting.study); "" for seed 0."""
    from components.reporting.study import seed_overrides

    overrides = seed_overrides(int(getattr(args, "seed", 0) or 0), settings.params())
    return json.dumps(overrides) if overrides else ""


def _dataset_notes(result) -> list[str]:
    """What ingestion accepted and reported (duplicates kept once, litter skipped)."""
    mats = [m for m in result.asset_materializations_for_node("face_dataset")]
    if not mats:
        return []
    meta = mats[-1].metadata
    pairs = meta["duplicate_pairs"].value if "duplicate_pairs" in meta else []
    count = int(meta["duplicates_kept_once"].value) if "duplicates_kept_once" in meta else 0
    ignored = meta["ignored_files"].value if "ignored_files" in meta else []
    notes = []
    if count:
        shown = "; ".join(f"{d['dropped']} = {d['kept']}" for d in pairs[:3])
        notes.append(f"privface: face_dataset: {count} exact duplicate(s) within an identity kept once "
                     f"({shown}{' ...' if count > 3 else ''}); all are listed in the Data Docs: "
                     f"{meta['data_docs'].value}")
    if ignored:
        notes.append(f"privface: face_dataset: skipped {len(ignored)} operating-system file(s) "
                     f"({', '.join(ignored[:3])}{' ...' if len(ignored) > 3 else ''})")
    return notes


def run_stages(args) -> int:
    """The stages as real Dagster runs, in this process (the supervised child)."""
    import dagster as dg

    from pipelines.definitions import build_definitions
    from pipelines.failures import failure_lines, stored_in, was_interrupted, write_run_log

    from pipelines.supervisor import close_interrupted_runs, watch_parent

    home = ensure_dagster_home()
    session = os.environ[CHILD_ENV]
    log = Path(os.environ[LOG_ENV])
    orphaned = []
    watch_parent(lambda: orphaned.append(True))
    defs = build_definitions(profile=args.profile, data_dir=args.data_dir or "", defenses=args.defenses or "",
                             device=args.device, workdir=args.workdir or "", reports_dir=args.reports_dir or "",
                             mlflow_uri=os.environ.get("MLFLOW_TRACKING_URI", ""),   # e.g. a shared server
                             params_path=str(Path(args.params).resolve()) if args.params else "",
                             overrides=_settings(args).overrides)
    settings = defs.resources["settings"]
    defenses = list(settings.params()["defenses"])
    if "baseline" not in defenses:
        defenses.insert(0, "baseline")
    instance = dg.DagsterInstance.get()
    _console_logging(args.log_level or "INFO")
    quiet = not (args.verbose or args.log_level)
    log_config = {"loggers": {"console": {"config": {"log_level": "CRITICAL" if quiet else
                                                     (args.log_level or "INFO")}}}}
    started = time.time()
    stages = [("prepare", None)] + [("defend_and_attack", d) for d in defenses] + [("report", None)]
    for job_name, partition in stages:
        label = f"{job_name}[{partition}]" if partition else job_name
        print(f"privface: running {label} ...", file=sys.stderr, flush=True)
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition, run_config=log_config, raise_on_error=False,
            tags={"privface/trigger": "cli", "privface/profile": args.profile, "privface/session": session})
        write_run_log(instance, result.run_id, log, label)
        if was_interrupted(result):
            if orphaned:   # no supervisor left to close the runs
                close_interrupted_runs(session, settings, log)
            return 130     # else the supervisor reports it and closes the runs
        if job_name == "prepare":
            for note in _dataset_notes(result):
                print(note, file=sys.stderr)
        refusal = _gate_refusal(result)
        if refusal:
            print(f"privface: the promotion gate passed no candidate; no champion alias moved:\n{refusal}",
                  file=sys.stderr)
        elif not result.success:
            where, lines, refused = failure_lines(result)
            stored = stored_in(result)
            changed = (f"stored before it: {', '.join(stored)}; nothing after it was built" if stored
                       else "nothing stored was changed")
            footer = f"{changed}; full log: {log}"
            print(block(f"{label} {'refused the input' if refused else 'failed'} at {where} "
                        f"(Dagster run {result.run_id[:8]})", lines, footer), file=sys.stderr)
            return 1
    report = settings.reports_dir()
    metrics = json.loads((report / "metrics.json").read_text())
    _print_table(metrics)
    tracking = defs.resources["mlflow_tracking"].resolved_uri()
    print(f"report:       {report / 'report.html'}")
    print(f"metrics:      {report / 'metrics.json'}")
    print(f"mlflow store: {tracking}")
    print(f"dagster home: {home}")
    print(f"log:          {log}")
    print(f"elapsed:      {(time.time() - started) / 60:.1f} min")
    return 0


def cmd_run(args) -> int:
    if os.environ.get(CLOSE_ENV):
        from pipelines.supervisor import close_interrupted_runs

        close_interrupted_runs(os.environ[CLOSE_ENV], _settings(args), Path(os.environ[LOG_ENV]))
        return 0
    if os.environ.get(CHILD_ENV):
        try:
            return run_stages(args)
        except KeyboardInterrupt:   # between two Dagster runs: nothing to close here
            return 130
    from pipelines.precheck import InputProblem, precheck
    from pipelines.supervisor import supervise

    try:
        settings = precheck(args, _settings)
    except InputProblem as problem:
        print(block(problem.title, problem.lines, "nothing was run and nothing stored was changed"), file=sys.stderr)
        return 2
    return supervise(args, settings)


def cmd_study(args) -> int:
    """`privface run` once per seed (each its own supervised run, workdir and reports), then
    mean and spread per defense over the seeds (components.reporting.study)."""
    from components.reporting.study import study_rows, study_table

    if args.seeds < 2:
        print(block("a study needs at least 2 seeds", [("got", str(args.seeds))]), file=sys.stderr)
        return 2
    base = _settings(argparse.Namespace(**{**vars(args), "seed": 0}))
    workdir, reports = base.workdir(), base.reports_dir() / "study"
    runs, times = [], []
    for k in range(args.seeds):
        command = ["run", "--profile", args.profile, "--seed", str(k), "--device", args.device,
                   "--workdir", str(workdir if k == 0 else Path(f"{workdir}-seed{k}")),
                   "--reports-dir", str(reports / f"seed{k}")]
        for flag, value in (("--data-dir", args.data_dir), ("--defenses", args.defenses), ("--params", args.params)):
            if value:
                command += [flag, value]
        print(f"privface: study seed {k + 1}/{args.seeds}: privface {' '.join(command)}", file=sys.stderr, flush=True)
        started = time.time()
        # Ctrl-C reaches the run's own supervisor, which stops and closes the run; the study
        # waits for it (ignoring the signal itself) and then stops too
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *command],
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)).wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        if code != 0:
            print(f"privface: the study stopped at seed {k} (exit {code}); the seeds before it are kept under "
                  f"{reports}", file=sys.stderr)
            return code
        times.append(round((time.time() - started) / 60, 2))
        runs.append(json.loads((reports / f"seed{k}" / "metrics.json").read_text()))
    rows = study_rows(runs)
    table = study_table(rows)
    from components.reporting.metrics_file import write_json

    write_json({"profile": args.profile, "seeds": args.seeds, "minutes_per_seed": times, "rows": rows},
               reports / "study.json")
    (reports / "study.md").write_text(f"# privface study: profile {args.profile}, {args.seeds} seeds\n\n"
                                      f"mean ± sd over the seeds\n\n{table}\n")
    print(table)
    print(f"study:        {reports / 'study.json'} (per seed: {reports}/seed<k>/)")
    print(f"elapsed:      {sum(times):.1f} min ({', '.join(f'{t:.1f}' for t in times)} per seed)")
    return 0


def cmd_generate(args) -> int:
    from components.config import ParamsError, load_params, resolve_path
    from components.data.synthetic import SyntheticConfig, write_dataset

    path = Path(args.params).resolve() if args.params else PROJECT_ROOT / "params.yaml"
    try:
        params = load_params(path, args.profile)
    except ParamsError as err:
        print(block("the params file cannot be used", [("file", err.path), *(("problem", p) for p in err.problems),
                                                        ("fix", err.hint)]), file=sys.stderr)
        return 2
    root = resolve_path(params["data"]["dir"], PROJECT_ROOT)
    if root.exists() and any(root.iterdir()):
        print(f"privface: {root} exists; left as it is")
        return 0
    write_dataset(root, SyntheticConfig(**params["data"]["synthetic"]))
    print(f"privface: wrote the synthetic dataset to {root}")
    return 0


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The options `run` and `study` share: what to run, on which data, where."""
    parser.add_argument("--profile", default="demo", help="a profile of params.yaml (ci, demo, paper)")
    parser.add_argument("--data-dir", help="a folder of identity sub-folders (default: the profile's dataset)")
    parser.add_argument("--defenses", help="comma list of defenses (default: the profile's run list)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--params", help="the params file (default: the project's params.yaml)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="privface", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the whole graph through Dagster and print the table")
    _run_options(run)
    run.add_argument("--workdir", help="where stores and checkpoints go (default: params' workdir)")
    run.add_argument("--reports-dir", help="where metrics.json and report.html go (default: reports/)")
    run.add_argument("--verbose", action="store_true", help="Dagster's event log on the console too")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="level of Dagster's console log and of the components' progress lines (implies --verbose)")
    run.add_argument("--seed", type=int, default=0,
                     help="train and attack with another seed (0: the profile as it is; see `privface study`)")
    run.set_defaults(func=cmd_run)
    study = sub.add_parser("study", help="`run` with N seeds, then mean and spread per defense")
    study.add_argument("--seeds", type=int, default=3, help="how many seeds (0 .. N-1; seed 0 is the profile's)")
    _run_options(study)
    study.add_argument("--workdir", help="seed 0's workdir (seed k: <workdir>-seed<k>)")
    study.add_argument("--reports-dir", help="the study goes to <reports-dir>/study (default: reports/)")
    study.set_defaults(func=cmd_study)
    gen = sub.add_parser("generate", help="write the synthetic dataset of a profile if it is missing")
    gen.add_argument("--profile", default="demo")
    gen.add_argument("--params", help="the params file (default: the project's params.yaml)")
    gen.set_defaults(func=cmd_generate)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # the supervised child gets the same command
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
