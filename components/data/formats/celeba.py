"""CelebA annotation files: ``identity_CelebA.txt`` and ``list_attr_celeba.txt``.

Layouts as the CelebA dataset's README (Liu et al., "Deep Learning Face Attributes in the Wild")
gives them: identities are lines "000001.jpg 2880"; attributes are a count line, a line of the
attribute names, then "000001.jpg -1  1 ..." rows of -1/1 (columns are padded with extra spaces,
so lines are split on any whitespace). Attributes are mapped to 0/1. Counts are checked against
the header, so a truncated download or a shifted row is an error naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.errors import DataError
from components.data.formats.text import numbered_fields

_INT = re.compile(r"[0-9]+")
_VALUES = {"1", "-1"}


def _unique(path: Path, files: list[str], numbers: list[int]) -> None:
    seen: dict[str, int] = {}
    for f, n in zip(files, numbers):
        if f in seen:
            raise DataError(path, f"line {n}: {f} already listed on line {seen[f]}")
        seen[f] = n


def read_celeba_identities(path: str | Path) -> pd.DataFrame:
    """``identity_CelebA.txt`` as columns file, identity (int)."""
    path = Path(path)
    files, ids, numbers = [], [], []
    for n, fields in numbered_fields(path):
        if len(fields) != 2 or not _INT.fullmatch(fields[1]):
            raise DataError(path, f"line {n}: expected '<file> <identity number>', got {' '.join(fields)!r}")
        files.append(fields[0])
        ids.append(int(fields[1]))
        numbers.append(n)
    _unique(path, files, numbers)
    return pd.DataFrame({"file": files, "identity": np.array(ids, dtype=np.int64)})


def read_celeba_attributes(path: str | Path) -> pd.DataFrame:
    """``list_attr_celeba.txt`` as columns file, then one 0/1 column per attribute (from -1/1)."""
    path = Path(path)
    lines = numbered_fields(path)
    (n0, count), rest = lines[0], lines[1:]
    if len(count) != 1 or not _INT.fullmatch(count[0]):
        raise DataError(path, f"line {n0}: expected the number of images, got {' '.join(count)!r}")
    if not rest:
        raise DataError(path, "no attribute-name line after the image count")
    (n1, names), rows = rest[0], rest[1:]
    if len(set(names)) != len(names) or "file" in names:
        raise DataError(path, f"line {n1}: attribute names repeat or include 'file'")
    if len(rows) != int(count[0]):
        raise DataError(path, f"line {n0} declares {int(count[0])} images, but the file has {len(rows)} rows")
    values = np.empty((len(rows), len(names)), dtype=np.int8)
    for r, (n, fields) in enumerate(rows):
        if len(fields) != len(names) + 1:
            raise DataError(path, f"line {n}: {len(fields) - 1} values for {len(names)} attributes")
        if not _VALUES.issuperset(fields[1:]):
            c, v = next((c, v) for c, v in enumerate(fields[1:]) if v not in _VALUES)
            raise DataError(path, f"line {n}: value {v!r} for {names[c]} is not -1 or 1")
        values[r] = [v == "1" for v in fields[1:]]
    files = [fields[0] for _, fields in rows]
    _unique(path, files, [n for n, _ in rows])
    df = pd.DataFrame(values, columns=names)
    df.insert(0, "file", files)
    return df


__all__ = ["read_celeba_attributes", "read_celeba_identities"]
