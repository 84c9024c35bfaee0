"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

Each file is a pickle (Python 2 or 3, see the ``pickle`` module's protocol specification) of
``(images, issame)``: encoded image bytes, and one bool per pair, images 2i and 2i+1 forming pair i.
insightface loads them with ``pickle.load(f, encoding='bytes')``, which runs whatever the file names;
these files are downloaded from third-party mirrors, so here they are loaded by an unpickler whose
``find_class`` refuses every global. Only tuples, lists, bytes, str, bools, ints and None can be
built that way, and a pickled class, function or numpy object is refused before anything runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from components.data.errors import DataError


class _Refused(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Builds containers and scalars only: any global (class, function, numpy object) is refused."""

    def find_class(self, module, name):
        refs = f"{module}.{name}"
        if module.split(".")[0] == "numpy":
            raise _Refused(f"it refers to {refs} (a numpy object); images must be plain bytes, and for "
                           "issame only plain bools are accepted")
        raise _Refused(f"it refers to {refs}; only tuples, lists, bytes, bools and ints are accepted, "
                       "no classes or functions")

    def persistent_load(self, pid):
        raise _Refused("it uses a persistent id; only plain containers and scalars are accepted")


def _check(path: Path, obj) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(path, f"not a verification set: expected a pair (images, issame), got {type(obj).__name__}"
                        + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""))
    images, issame = obj
    if not isinstance(images, (tuple, list)) or not isinstance(issame, (tuple, list)):
        raise DataError(path, "not a verification set: images and issame must be lists")
    if len(images) != 2 * len(issame):
        raise DataError(path, f"not a verification set: {len(images)} images for {len(issame)} pairs "
                        "(need two images per pair)")
    if not issame:
        raise DataError(path, "not a verification set: no pairs")
    for i, img in enumerate(images):
        if not isinstance(img, bytes) or not img:
            raise DataError(path, f"image {i} is {type(img).__name__}"
                            f"{' (empty)' if isinstance(img, bytes) else ''}, not encoded image bytes")
    for i, v in enumerate(issame):
        if not (isinstance(v, bool) or (type(v) is int and v in (0, 1))):
            raise DataError(path, f"issame[{i}] is {v!r} ({type(v).__name__}); only plain bools are accepted")
    return list(images), np.array([bool(v) for v in issame], dtype=bool)


def load_verification_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame as a bool array) of an insightface ``.bin``, loaded without running code."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _PlainUnpickler(fh, encoding="bytes").load()
            trailing = fh.read(1)
    except _Refused as e:
        raise DataError(path, f"refused to load this pickle: {e}",
                        hint="re-create the file with plain lists of bytes and bools") from None
    except OSError as e:
        raise DataError(path, f"cannot be read: {e.strerror or e}") from e
    except Exception as e:  # any malformed pickle: EOFError, UnpicklingError, ValueError, ...
        raise DataError(path, f"not a valid pickle: {type(e).__name__}: {e}") from None
    if trailing:
        raise DataError(path, "data follows the end of the pickle (corrupt or concatenated file)")
    return _check(path, obj)


__all__ = ["load_verification_bin"]
