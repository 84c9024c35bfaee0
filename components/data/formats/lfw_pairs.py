"""LFW's ``pairs.txt`` verification protocol (the LFW README's "View 2": 10 folds).

Layout as the LFW technical report and README define it: a header "<folds> <n>", then per fold
n matched lines "name i j" followed by n mismatched lines "name1 i name2 j", images being
``<Name>/<Name>_<NNNN>.jpg`` with a 4-digit 1-based number. The View 1 files (``pairsDevTrain.txt``,
``pairsDevTest.txt``) have a one-number header "n" and are read as a single fold. The layout is
positional, so every line is checked against what its position requires and the counts must add up;
a shifted file would otherwise silently mislabel pairs across folds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from components.data.errors import DataError
from components.data.formats.text import numbered_fields

_NAME = re.compile(r"[^/\\\s]+")
_NUM = re.compile(r"[0-9]+")


def _image(path: Path, n: int, name: str, num: str) -> str:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise DataError(path, f"line {n}: {name!r} is not a valid person name")
    if not _NUM.fullmatch(num) or int(num) < 1:
        raise DataError(path, f"line {n}: image number {num!r} is not a positive integer")
    return f"{name}/{name}_{int(num):04d}.jpg"


def _header(path: Path, n: int, fields: list[str]) -> tuple[int, int]:
    if len(fields) in (1, 2) and all(_NUM.fullmatch(f) and int(f) > 0 for f in fields):
        return (1, int(fields[0])) if len(fields) == 1 else (int(fields[0]), int(fields[1]))
    looks = " (it looks like a pair line: the header is missing)" if len(fields) in (3, 4) else ""
    raise DataError(path, f"line {n}: expected the header '<folds> <pairs per fold>' (e.g. '10 300'), "
                    f"got {' '.join(fields)!r}{looks}")


def read_lfw_pairs(path: str | Path, image_root: str | Path | None = None) -> pd.DataFrame:
    """Pairs of ``pairs.txt`` as columns path_a, path_b, label (1 same, 0 different), fold (0-based).

    Paths are relative ("Name/Name_0001.jpg") or, with `image_root`, under it and checked to exist."""
    path = Path(path)
    lines = numbered_fields(path, "empty file: expected the header '<folds> <pairs per fold>'")
    folds, per_fold = _header(path, *lines[0])
    body = lines[1:]
    if len(body) != 2 * folds * per_fold:
        raise DataError(path, f"header announces {folds} folds x {per_fold} matched + {per_fold} mismatched "
                        f"pairs = {2 * folds * per_fold} lines, but the file has {len(body)}")
    root = Path(image_root) if image_root is not None else None
    rows = []
    for i, (n, fields) in enumerate(body):
        fold, same = i // (2 * per_fold), i % (2 * per_fold) < per_fold
        if same and len(fields) == 3:
            a, b = _image(path, n, fields[0], fields[1]), _image(path, n, fields[0], fields[2])
        elif not same and len(fields) == 4:
            a, b = _image(path, n, fields[0], fields[1]), _image(path, n, fields[2], fields[3])
        else:
            want = "matched pair 'name i j'" if same else "mismatched pair 'name1 i name2 j'"
            raise DataError(path, f"line {n}: fold {fold + 1} expects a {want} here, got {' '.join(fields)!r}")
        if root is not None:
            a, b = str(root / a), str(root / b)
            for p in (a, b):
                if not Path(p).is_file():
                    raise DataError(path, f"line {n}: image {p} does not exist",
                                    hint="check image_root points at the LFW image folder")
        rows.append((a, b, int(same), fold))
    return pd.DataFrame(rows, columns=["path_a", "path_b", "label", "fold"])


__all__ = ["read_lfw_pairs"]
