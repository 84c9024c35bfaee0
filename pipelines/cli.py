"""The `privface` command: the pipeline without the UI, through real Dagster runs on a
persistent instance (DAGSTER_HOME, default ./dagster_home), so the UI shows them too.

  privface run --profile demo [--data-dir DIR] [--defenses a,b] [--device auto]
  privface generate --profile demo     # write the synthetic dataset if it is missing
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipelines import telemetry  # noqa: F401

from pipelines.resources import PROJECT_ROOT  # noqa: E402

DAGSTER_YAML = """# privface Dagster instance: no telemetry; one training step at a time in the gpu pool
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
"""


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


def _print_table(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from components.reporting.metrics_file import summary_rows

    table = Table(title=f"privface: {metrics['dataset']['name']} "
                        f"({metrics['dataset']['identities']} identities, {metrics['dataset']['images']} images)")
    rows = summary_rows(metrics)
    cols = list(rows[0]) if rows else []
    for c in cols:
        table.add_column(c, justify="left" if c == "defense" else "right")
    for row in rows:
        table.add_row(*["n/a" if row[c] is None else (f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]))
                        for c in cols])
    Console(width=180).print(table)
    print("TI: template inversion, RR: representation recovery, MI: model inversion, MIA: membership "
          "inference, attr gain: attribute probe balanced accuracy above chance; n/a: not run")


def _gate_refusal(result) -> str:
    """The gate's verdicts when the failed promotion_gate check is the only thing that failed
    in the run (a refusal to promote is an outcome to show, not a pipeline error), else ""."""
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate" and not e.passed]
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    if not gate or any(e.event_specific_data.error.cls_name != "DagsterAssetCheckFailedError" for e in failures):
        return ""
    return "\n".join(f"  {name}: {value.value}" for name, value in gate[0].metadata.items() if name != "passing")


def cmd_run(args) -> int:
    import dagster as dg

    from components.defenses import DEFENSES
    from pipelines.definitions import build_definitions

    home = ensure_dagster_home()
    defs = build_definitions(profile=args.profile, data_dir=args.data_dir or "", defenses=args.defenses or "",
                             device=args.device, workdir=args.workdir or "", reports_dir=args.reports_dir or "",
                             mlflow_uri=os.environ.get("MLFLOW_TRACKING_URI", ""))   # e.g. a shared server
    settings = defs.resources["settings"]
    params = settings.params()
    defenses = list(params["defenses"])
    if "baseline" not in defenses:
        defenses.insert(0, "baseline")
    unknown = [d for d in defenses if d not in DEFENSES]
    if unknown:
        print(f"privface: unknown defense(s) {unknown}; known: {', '.join(DEFENSES)}", file=sys.stderr)
        return 2
    instance = dg.DagsterInstance.get()
    log_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    started = time.time()
    stages = [("prepare", None)] + [("defend_and_attack", d) for d in defenses] + [("report", None)]
    for job_name, partition in stages:
        label = f"{job_name}[{partition}]" if partition else job_name
        print(f"privface: running {label} ...", file=sys.stderr, flush=True)
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition, run_config=log_config, raise_on_error=False,
            tags={"privface/trigger": "cli", "privface/profile": args.profile})
        refusal = _gate_refusal(result)
        if refusal:
            print(f"privface: the promotion gate passed no candidate; no champion alias moved:\n{refusal}",
                  file=sys.stderr)
        elif not result.success:
            print(f"privface: {label} failed (Dagster run {result.run_id}); see the log above or `make ui`",
                  file=sys.stderr)
            return 1
    report = settings.reports_dir()
    import json

    metrics = json.loads((report / "metrics.json").read_text())
    _print_table(metrics)
    tracking = defs.resources["mlflow_tracking"].resolved_uri()
    print(f"report:       {report / 'report.html'}")
    print(f"metrics:      {report / 'metrics.json'}")
    print(f"mlflow store: {tracking}")
    print(f"dagster home: {home}")
    print(f"elapsed:      {(time.time() - started) / 60:.1f} min")
    return 0


def cmd_generate(args) -> int:
    from components.config import load_params, resolve_path
    from components.data.synthetic import SyntheticConfig, write_dataset

    params = load_params(PROJECT_ROOT / "params.yaml", args.profile)
    root = resolve_path(params["data"]["dir"], PROJECT_ROOT)
    if root.exists() and any(root.iterdir()):
        print(f"privface: {root} exists; left as it is")
        return 0
    write_dataset(root, SyntheticConfig(**params["data"]["synthetic"]))
    print(f"privface: wrote the synthetic dataset to {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="privface", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the whole graph through Dagster and print the table")
    run.add_argument("--profile", default="demo", choices=["ci", "demo", "paper"])
    run.add_argument("--data-dir", help="a folder of identity sub-folders (default: the profile's dataset)")
    run.add_argument("--defenses", help="comma list of defenses (default: the profile's run list)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--workdir", help="where stores and checkpoints go (default: params' workdir)")
    run.add_argument("--reports-dir", help="where metrics.json and report.html go (default: reports/)")
    run.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)
    gen = sub.add_parser("generate", help="write the synthetic dataset of a profile if it is missing")
    gen.add_argument("--profile", default="demo", choices=["ci", "demo", "paper"])
    gen.set_defaults(func=cmd_generate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
