"""Checkpoint files that survive a kill at any moment and load without unpickling code.

A checkpoint is written to a temporary file in the same folder and then moved over the old
one with ``os.replace`` (atomic on POSIX), so a reader sees either the previous epoch or
the new one, never a torn file. It is read with ``torch.load(weights_only=True)``, which
refuses arbitrary pickled objects; ``save_checkpoint`` therefore checks up front that the
state holds only tensors, numbers, strings, lists, tuples and dicts, so a bad hook state
fails at the first save rather than at resume time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "last.pt"

_SCALARS = (bool, int, float, str, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` could
    not read back."""
    if isinstance(obj, (torch.Tensor, *_SCALARS)):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: dict key {key!r} of type {type(key).__name__} is not str or int")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints may hold only "
                    "tensors, numbers, strings, None, lists, tuples and dicts")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    check_plain(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """Read a checkpoint written by ``save_checkpoint``; None if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able description (sorted keys), e.g. a training config."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (hex) of a module's state-dict tensors in order: a checkpoint keyed by it is
    never reused for other weights (a retrained network upstream)."""
    tensors = (v.detach().cpu().numpy().tobytes() for v in module.state_dict().values())
    return hashlib.sha256(b"".join(tensors)).hexdigest()


__all__ = ["CHECKPOINT_NAME", "check_plain", "fingerprint", "load_checkpoint", "save_checkpoint", "weights_digest"]
