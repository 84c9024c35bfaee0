"""Writes that a crash, a failed write or a second process writing the same path never
leave half-done: a file is written to a temp file beside it and moved in with os.replace;
a folder is built in a temp folder beside it and swapped in under a file lock.

The lock matters for folders only: os.replace of a file is atomic even with two writers
(the last one wins), but replacing a folder takes two renames (old out, new in), and two
processes doing that at once (two pipeline runs materializing the same asset) would fail
on each other's half-done swap, while a reader between the renames would find nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from filelock import FileLock


def atomic_write(path: str | Path, write: Callable[[IO], object], binary: bool = True,
                 mode: int = 0o644) -> Path:
    """Call `write(fh)` on a temp file in `path`'s folder, fsync it, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), binary=False)


@contextlib.contextmanager
def path_lock(path: str | Path) -> Iterator[None]:
    """An inter-process lock on a file or folder (a `.<name>.lock` file beside it): held
    while a folder is swapped or read, so a reader never sees it half-replaced, or while a
    store file is created or written by one process at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        yield


def recover_dir(folder: str | Path) -> None:
    """Put back a folder that a killed swap left out (moved aside into `.<name>.old-*`, the
    new version never moved in). Call under `path_lock(folder)`."""
    folder = Path(folder)
    if folder.exists():
        return
    for old in sorted(folder.parent.glob(f".{folder.name}.old-*")):
        if (old / folder.name).is_dir():
            os.replace(old / folder.name, folder)
            shutil.rmtree(old, ignore_errors=True)
            return


def atomic_write_dir(folder: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on an empty temp folder beside `folder`, then swap it in for
    `folder` under `path_lock`. The slow part (writing) runs unlocked; a failed or
    interrupted write or swap leaves the previous folder as it was (a kill between the two
    renames is repaired by `recover_dir` on the next write or read)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    old = None
    swapped = False
    try:
        write(tmp)
        with path_lock(folder):
            recover_dir(folder)
            try:
                if folder.exists():
                    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
                    os.replace(folder, old / folder.name)
                os.replace(tmp, folder)
                swapped = True
            except BaseException:
                if old is not None and (old / folder.name).exists() and not folder.exists():
                    os.replace(old / folder.name, folder)   # put the previous version back
                raise
    finally:
        if not swapped:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (swapped or not (old / folder.name).exists()):
            shutil.rmtree(old, ignore_errors=True)   # the displaced version, only once replaced
    return folder
