"""Output goes through logging: components and the Dagster assets log through module
loggers (which the CLI shows and Dagster's instance config takes into each run's event log);
only the command line's own modules write to the terminal."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"pipelines/cli.py", "pipelines/supervisor.py"}   # the CLI and its supervising parent


def test_no_print_outside_the_command_line():
    found = []
    for path in sorted([*ROOT.glob("components/**/*.py"), *ROOT.glob("pipelines/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel in TERMINAL:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{rel}:{node.lineno}")
    assert not found, found


def test_the_instance_config_takes_component_logs_into_dagster():
    import yaml

    from pipelines.cli import DAGSTER_YAML

    cfg = yaml.safe_load(DAGSTER_YAML)
    assert "components" in cfg["python_logs"]["managed_python_loggers"]
    assert cfg["telemetry"] == {"enabled": False}
