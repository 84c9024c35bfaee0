"""Shared benchmark result store: every benchmark merges its entry into one JSON file
(reports/bench.json by default) so the pipeline's reports can cite measured numbers.
Writes are read-modify-write under a lock file and atomic (temp file + os.replace).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from components.atomic import atomic_write_text

try:  # POSIX advisory lock; elsewhere we rely on the atomic replace alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["record", "load"]


def _jsonable(obj):
    """json.dump default: numpy scalars/arrays, paths and sets."""
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"benchmark result value of type {type(obj).__name__} is not JSON-serialisable")


@contextmanager
def _locked(path: Path):
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(path="reports/bench.json") -> dict:
    """All recorded benchmark entries ({} when the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or delete it before recording") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of benchmark entries, got {type(data).__name__}")
    return data


def record(name: str, result: dict, path="reports/bench.json") -> None:
    """Merge {name: result} into the JSON file at `path`, keeping other benchmarks' entries."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"benchmark name must be a non-empty string, got {name!r}")
    if not isinstance(result, dict):
        raise ValueError(f"benchmark result must be a dict, got {type(result).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # serialise first so a bad value never leaves a half-written or emptied file
    payload = json.loads(json.dumps(result, default=_jsonable, allow_nan=True))
    with _locked(path):
        data = load(path)
        data[name] = payload
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
