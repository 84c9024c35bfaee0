"""MXNet RecordIO as insightface stores its training sets (``train.rec``, ``train.idx``, ``property``).

Read without mxnet, from the format as dmlc-core specifies it (``dmlc/recordio.h``: magic, a length
word whose upper 3 bits are the continuation flag, payload padded to 4 bytes) and from the MXNet
image-record header (``mxnet.recordio.IRHeader``, struct ``IfQQ``). Records are reached by seeking to
the offsets in ``train.idx``, so a multi-gigabyte ``.rec`` is never held in memory; every header is
checked, so a truncated or corrupt file is a DataError naming the file and the byte offset rather
than garbage bytes handed to an image decoder. ``write_recordio`` writes the same bytes MXNet's
writer does (including its split of a payload at an aligned magic), for fixtures and tests.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from components.data.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR = struct.Struct("<IfQQ")  # flag, label, id, id2


class IRHeader(NamedTuple):
    flag: int
    label: float | np.ndarray  # float when flag == 0, else `flag` float32 labels
    id: int
    id2: int


def _lrecord(cflag: int, length: int) -> bytes:
    return _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | length)


def _pad(n: int) -> int:
    return (n + 3) & ~3


class RecordIOReader:
    """Random access to a ``.rec`` through its ``.idx``.

    With an insightface header (record 0 with flag > 0), image records are keys 1 .. label[0]-1 and
    identity records keys label[0] .. label[1]-1; otherwise every key is an image record.
    ``len()`` and iteration cover the image records only."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        try:
            self._size = self.rec_path.stat().st_size
        except OSError as e:
            raise DataError(self.rec_path, f"cannot be read: {e.strerror or e}") from e
        self._fh = None
        self.offsets = self._read_idx()
        self.image_keys, self.identity_keys = self._layout()

    # ------------------------------------------------------------------ index and layout

    def _read_idx(self) -> dict[int, int]:
        try:
            lines = self.idx_path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(self.idx_path, f"cannot be read as a RecordIO index: {e}") from e
        offsets: dict[int, int] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                key, offset = int(parts[0]), int(parts[1])
            except ValueError:
                raise DataError(self.idx_path, f"line {n}: expected 'key<TAB>offset', got {line!r}") from None
            if key in offsets:
                raise DataError(self.idx_path, f"line {n}: key {key} appears twice")
            if offset < 0 or offset % 4 or offset + 8 > self._size:
                raise DataError(self.idx_path, f"line {n}: offset {offset} of key {key} is not a record "
                                f"position in {self.rec_path.name} ({self._size} bytes, records 4-byte aligned)")
            offsets[key] = offset
        if not offsets:
            raise DataError(self.idx_path, "empty RecordIO index")
        return offsets

    def _layout(self) -> tuple[list[int], list[int]]:
        if 0 not in self.offsets:
            return sorted(self.offsets), []
        header, _ = self.unpack(self.read(0), key=0)
        if header.flag == 0:
            return sorted(self.offsets), []
        labels = [float(v) for v in header.label[:2]]
        if not all(math.isfinite(v) and v == int(v) for v in labels):
            raise DataError(self.rec_path, f"header record 0 has non-integer key bounds {labels}")
        end_images = int(labels[0])
        end_ids = int(labels[1]) if len(labels) > 1 else end_images
        if not 1 <= end_images <= end_ids:
            raise DataError(self.rec_path, f"header record 0 has an invalid key range {labels[:2]}")
        missing = [k for k in range(1, end_ids) if k not in self.offsets]
        if missing:
            raise DataError(self.idx_path, f"header record 0 announces keys 1..{end_ids - 1}, but "
                            f"{len(missing)} are missing from the index (first: {missing[0]})")
        return list(range(1, end_images)), list(range(end_images, end_ids))

    # ------------------------------------------------------------------ records

    def _file(self):
        if self._fh is None:
            self._fh = open(self.rec_path, "rb")
        return self._fh

    def read(self, key: int) -> bytes:
        """The payload of record `key`, split parts joined as MXNet's reader joins them."""
        if key not in self.offsets:
            raise KeyError(key)
        fh = self._file()
        pos = self.offsets[key]
        fh.seek(pos)
        parts: list[bytes] = []
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise DataError(self.rec_path, f"truncated at byte offset {pos} (record {key}: record header)")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(self.rec_path, f"bad magic 0x{magic:08x} at byte offset {pos} (record {key}); "
                                "the file is corrupt or the index does not match it")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            expected = (0, 1) if not parts else (2, 3)
            if cflag not in expected:
                raise DataError(self.rec_path, f"unexpected continuation flag {cflag} at byte offset {pos} "
                                f"(record {key}); expected one of {expected}")
            data = fh.read(_pad(length))
            if len(data) < _pad(length):
                raise DataError(self.rec_path, f"truncated at byte offset {pos} (record {key}: "
                                f"{length} bytes announced, {len(data)} left)")
            parts.append(data[:length])
            pos += 8 + _pad(length)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def unpack(self, payload: bytes, key: int | None = None) -> tuple[IRHeader, bytes]:
        """Split an image-record payload into its IRHeader and the encoded image bytes."""
        where = f" (record {key})" if key is not None else ""
        if len(payload) < _IR.size:
            raise DataError(self.rec_path, f"record payload of {len(payload)} bytes is shorter than "
                            f"the {_IR.size}-byte image header{where}")
        flag, label, id1, id2 = _IR.unpack_from(payload)
        rest = payload[_IR.size:]
        if flag > 0:
            if len(rest) < 4 * flag:
                raise DataError(self.rec_path, f"image header announces {flag} labels but the payload "
                                f"holds only {len(rest)} bytes{where}")
            label = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
            rest = rest[4 * flag:]
        return IRHeader(flag, label, id1, id2), rest

    def identity_of(self, header: IRHeader, key: int) -> int:
        value = float(header.label if header.flag == 0 else header.label[0])
        if not math.isfinite(value) or value != int(value) or value < 0:
            raise DataError(self.rec_path, f"record {key} has label {value}, not a non-negative integer")
        return int(value)

    def __len__(self) -> int:
        return len(self.image_keys)

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        """(key, identity label, encoded image bytes) for every image record, in key order."""
        for key in self.image_keys:
            header, image = self.unpack(self.read(key), key=key)
            yield key, self.identity_of(header, key), image

    def identity_ranges(self) -> list[tuple[int, int]]:
        """[first image key, end image key) of each identity record (insightface layout only)."""
        out = []
        for key in self.identity_keys:
            header, _ = self.unpack(self.read(key), key=key)
            if header.flag < 2:
                raise DataError(self.rec_path, f"identity record {key} holds no [start, end) key range")
            out.append((int(header.label[0]), int(header.label[1])))
        return out

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # picklable for data-loader workers: each reopens the file
        return {**self.__dict__, "_fh": None}


def read_property(path: str | Path) -> tuple[int, int, int]:
    """insightface's ``property`` file: "num_classes,height,width"."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot be read: {e}") from e
    try:
        num_classes, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise DataError(path, f"expected 'num_classes,height,width', got {text[:80]!r}") from None
    if min(num_classes, h, w) <= 0:
        raise DataError(path, f"expected positive numbers, got {text!r}")
    return num_classes, h, w


# ---------------------------------------------------------------------- writing


def pack(label, image: bytes, id1: int = 0, id2: int = 0) -> bytes:
    """An image-record payload as ``mxnet.recordio.pack`` builds it: a number gives flag 0, a
    sequence gives flag = its length with the float32 labels between header and image."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR.pack(0, float(label), id1, id2) + image
    arr = np.asarray(label, dtype="<f4").ravel()
    return _IR.pack(arr.size, 0.0, id1, id2) + arr.tobytes() + image


def _record_bytes(payload: bytes) -> bytes:
    """dmlc RecordIOWriter::WriteRecord: split at each 4-byte-aligned magic, pad the end to 4."""
    if len(payload) > _LEN_MASK:
        raise ValueError("RecordIO records must be shorter than 2**29 bytes")
    out, start = [], 0
    for i in range(0, len(payload) - 3, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += [_lrecord(1 if start == 0 else 2, i - start), payload[start:i]]
            start = i + 4
    tail = payload[start:]
    out += [_lrecord(3 if start else 0, len(tail)), tail, b"\0" * (_pad(len(tail)) - len(tail))]
    return b"".join(out)


def write_recordio(rec_path: str | Path, idx_path: str | Path, records: Iterable[tuple[int, bytes]],
                   insightface: bool = True) -> int:
    """Write (identity label, encoded image) records; returns the number of image records.

    insightface=True writes its layout: header record 0 (labels [end of images, end of identities]),
    images as keys 1..N (their labels must come grouped by identity), then one identity record per
    label holding its [start, end) image keys. insightface=False writes the images as keys 0..N-1."""
    records = list(records)
    payloads: list[bytes] = []
    if insightface:
        ranges: dict[int, list[int]] = {}
        for key, (label, _) in enumerate(records, 1):
            if label in ranges and ranges[label][1] != key:
                raise ValueError(f"label {label} is not contiguous: insightface needs images grouped by identity")
            ranges.setdefault(label, [key, key])[1] = key + 1
        end_images = len(records) + 1
        payloads.append(pack([end_images, end_images + len(ranges)], b""))
    payloads += [pack(float(label), image) for label, image in records]
    if insightface:
        payloads += [pack([start, end], b"") for start, end in ranges.values()]
    pos, lines = 0, []
    with open(rec_path, "wb") as fh:
        for key, payload in enumerate(payloads):
            lines.append(f"{key}\t{pos}\n")
            pos += fh.write(_record_bytes(payload))
    Path(idx_path).write_text("".join(lines), encoding="ascii")
    return len(records)


__all__ = ["MAGIC", "IRHeader", "RecordIOReader", "pack", "read_property", "write_recordio"]
