"""Ingestion of identity-folder face datasets into a canonical in-memory form.

Layout expected under ``root``::

    root/
      attributes.csv          (optional: identity_name + attribute columns)
      README, .gitignore ...  (any non-directory file at the top level is ignored)
      s1/  1.pgm 2.pgm ...    (one sub-folder per identity; folder name = identity_name)
      s2/  ...

Canonicalisation (one fixed recipe, also folded into the dataset version):

1. decode with Pillow, restricted to PNG, JPEG, PPM/PGM/PBM, GIF and BMP, detected by
   *content* (file extensions are irrelevant; files without extension are fine);
   ``img.load()`` is called so truncated files are caught; for animated GIFs the
   first frame is used; JPEG EXIF orientation is applied;
2. convert to RGB: greyscale is replicated to three channels; palette images are
   expanded; images with transparency are composited over a **white** background;
   16-bit greyscale is scaled to 8 bit (divide by 257);
3. centre-crop to a square whose side is the *shorter* image side (the longer side is
   cut, equally from both ends, the extra pixel going to the far end);
4. resize to ``size x size`` with Pillow ``BICUBIC`` (anti-aliased when shrinking).

The loader is a pure function: it reads, never writes. On bad input it fails fast with
a :class:`DataError` naming the file or folder, checking in a deterministic order:
root, then folder structure (identities in natural order), then ``attributes.csv``,
then the image files one by one in natural order, then duplicates.

Real databases are messy, so the loader accepts what cannot bias the evaluation and
refuses what would: operating-system litter (``Thumbs.db``, ``desktop.ini``,
``.DS_Store``, ``__MACOSX/``, any dot-file) is skipped and listed in ``ignored``; the same
photo twice within one identity (equal canonical pixels) is kept once, the later copies
listed in ``duplicates``; the same photo under two identities is refused, naming both files,
since no identity-disjoint split could hold it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from components.atomic import atomic_write
from components.data.errors import DataError
from components.data.schema import BASE_COLUMNS, KNOWN_COLUMNS
from components.metrics.advantage import RESERVED

ATTRIBUTES_FILE = "attributes.csv"
RESAMPLE = Image.Resampling.BICUBIC
CANON_RECIPE = "rgb-white-alpha/center-crop-short-side/bicubic/v1"

# Pillow format names accepted (PPM plugin also reads PGM and PBM).
ALLOWED_FORMATS = ("PNG", "JPEG", "PPM", "GIF", "BMP")

# manifest columns, and the keys an attack block keeps beside its per-attribute measures
RESERVED_COLUMNS = KNOWN_COLUMNS | RESERVED

_STORE_META = "dataset.json"
_STORE_FORMAT = "privface-dataset/1"


@dataclass
class FaceDataset:
    images: np.ndarray  # (N, S, S, 3) uint8, canonical RGB, square
    manifest: pd.DataFrame  # one row per image, row i describes images[i]
    name: str
    version: str  # content hash of the dataset, first 12 hex chars
    # exact duplicates within an identity that were dropped: {identity_name, kept, dropped} (paths
    # relative to the root), and the operating-system litter that was skipped (relative paths)
    duplicates: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_identities(self) -> int:
        return int(self.manifest["identity"].nunique())

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def natural_key(name: str) -> tuple:
    """Sort key so that 's2' < 's10' and '2.png' < '10.png' (ties broken by the raw name)."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


# Files and folders that operating systems, archivers and NAS boxes leave beside photos
# (compared case-insensitively); dot-files (.DS_Store, AppleDouble "._x.jpg") are skipped too.
OS_LITTER = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "__macosx", "@eadir",
                       "$recycle.bin", "system volume information", "icon\r"})


def _hidden(p: Path) -> bool:
    """Not data: a dot-file or operating-system litter."""
    return p.name.startswith(".") or p.name.lower() in OS_LITTER


# --------------------------------------------------------------------------- images


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode == "P" and "transparency" in im.info
    ) or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return im.convert("RGB")
    return im


def _canonical(im: Image.Image, size: int) -> np.ndarray:
    im = _to_rgb(im)
    w, h = im.size
    side = min(w, h)
    left = (w - side) // 2
    top = (h - side) // 2
    if (w, h) != (side, side):
        im = im.crop((left, top, left + side, top + side))
    if im.size != (size, size):
        im = im.resize((size, size), resample=RESAMPLE)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # defensive: should never happen
        raise RuntimeError(f"canonicalisation produced shape {arr.shape}")
    return arr


def decode_image(path: Path, size: int) -> tuple[np.ndarray, str]:
    """Read one file and return (canonical pixels, sha256 of the raw file bytes).

    Raises DataError(path, "cannot be read as an image: <reason>") on any failure."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot be read as an image: {e.strerror or e}") from e
    file_hash = hashlib.sha256(raw).hexdigest()
    if not raw:
        raise DataError(path, "cannot be read as an image: empty file")
    try:
        with Image.open(io.BytesIO(raw), formats=list(ALLOWED_FORMATS)) as im:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            if im.format == "JPEG":
                im = ImageOps.exif_transpose(im)
            if im.width < 1 or im.height < 1:
                raise DataError(path, "cannot be read as an image: zero-sized image")
            arr = _canonical(im, size)
    except DataError:
        raise
    except UnidentifiedImageError as e:
        raise DataError(
            path,
            "cannot be read as an image: not a recognised image format "
            "(expected png, jpeg, pgm/ppm, gif or bmp)",
        ) from e
    except Image.DecompressionBombError as e:
        raise DataError(path, f"cannot be read as an image: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as e:
        reason = str(e) or type(e).__name__
        raise DataError(path, f"cannot be read as an image: {reason}") from e
    return arr, file_hash


def content_hash(pixels: np.ndarray) -> str:
    """sha256 over shape + raw bytes of canonical pixels (identical images -> same hash)."""
    h = hashlib.sha256()
    h.update(("x".join(str(d) for d in pixels.shape) + "|uint8|").encode())
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- attributes


def _read_attributes(path: Path, identity_names: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Parse and validate attributes.csv. Returns (attribute column names, {identity: {col: value}})."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a valid CSV: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(path, f"cannot be read: {e.strerror or e}") from e
    if "\x00" in text:
        raise DataError(path, "not a valid CSV: contains NUL bytes (binary file?)")

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = []
        header = None
        header_line = 0
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if header is None:
                header, header_line = row, reader.line_num
            else:
                rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(path, f"not a valid CSV: {e} (line {reader.line_num})") from e

    if header is None:
        raise DataError(path, "not a valid CSV: empty file (no header line)")
    header = [c.strip() for c in header]
    for c in header:
        if not c:
            raise DataError(path, f"empty column name in header (line {header_line})")
    seen = set()
    for c in header:
        if c in seen:
            raise DataError(path, f"duplicate column '{c}' in header")
        seen.add(c)
    if "identity_name" not in header:
        raise DataError(path, "missing column 'identity_name'")
    attr_cols = [c for c in header if c != "identity_name"]
    if not attr_cols:
        raise DataError(path, "no attribute columns (need 'identity_name' plus at least one attribute column)")
    for c in attr_cols:
        if c in RESERVED_COLUMNS:
            raise DataError(path, f"column '{c}' clashes with a name privface reserves ({sorted(RESERVED_COLUMNS)})",
                            hint="rename the column")

    known = set(identity_names)
    id_pos = header.index("identity_name")
    table: dict[str, dict[str, str]] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(
                path, f"not a valid CSV: line {line} has {len(row)} fields, header has {len(header)}"
            )
        values = [v.strip() for v in row]
        ident = values[id_pos]
        if not ident:
            raise DataError(path, f"empty value in column 'identity_name' on line {line}")
        if ident not in known:
            raise DataError(path, f"unknown identity '{ident}' on line {line}")
        if ident in table:
            raise DataError(path, f"duplicate identity '{ident}' on line {line}")
        rec = {}
        for c, v in zip(header, values):
            if c == "identity_name":
                continue
            if not v:
                raise DataError(path, f"empty value in column '{c}' on line {line}")
            rec[c] = v
        table[ident] = rec
    for ident in identity_names:
        if ident not in table:
            raise DataError(path, f"identity '{ident}' has no row")
    return attr_cols, table


# --------------------------------------------------------------------------- loader


def scan_folder(root: str | Path, ignored: list[str] | None = None) -> list[tuple[str, list[Path]]]:
    """Folder-structure pass: [(identity_name, [files in natural order])] in natural order.
    Cheap (no image is opened), so the CLI runs it before any pipeline work. Skipped litter
    is appended to `ignored` (paths relative to `root`) when a list is given."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset root does not exist", hint="check the --data-dir path")
    if not root.is_dir():
        raise DataError(root, "dataset root is not a directory",
                        hint="point --data-dir at a folder with one sub-folder per identity")
    skipped = ignored if ignored is not None else []
    try:
        entries = list(root.iterdir())
    except OSError as e:
        raise DataError(root, f"cannot list folder: {e.strerror or e}") from e
    skipped += sorted(p.name for p in entries if _hidden(p))
    dirs = sorted((p for p in entries if p.is_dir() and not _hidden(p)), key=lambda p: natural_key(p.name))
    if not dirs:
        raise DataError(root, "no identity folders (expected one sub-folder of images per identity)",
                        hint="put each person's photos in a sub-folder named after them")
    out = []
    for d in dirs:
        try:
            listing = list(d.iterdir())
        except OSError as e:
            raise DataError(d, f"cannot list folder: {e.strerror or e}") from e
        # litter, and what is neither a file nor a folder (a FIFO would block the reader)
        odd = [p for p in listing if _hidden(p) or not (p.is_file() or p.is_dir())]
        skipped += sorted(p.relative_to(root).as_posix() for p in odd)
        children = sorted((p for p in listing if p not in odd), key=lambda p: natural_key(p.name))
        for c in children:
            if c.is_dir():
                raise DataError(c, "unexpected sub-folder inside an identity folder (expected image files only)",
                                hint="move its images into the identity folder or out of the dataset")
        if not children:
            raise DataError(d, "no images", hint="remove the empty folder or add at least 2 photos")
        if len(children) == 1:
            raise DataError(d, "only 1 image; at least 2 are needed for verification",
                            hint="add a second photo of this person or remove the folder")
        out.append((d.name, children))
    return out


def _version(size: int, rows: list[tuple[str, str, str]], attr_cols: list[str], attrs: dict,
             dropped: list[str] = ()) -> str:
    h = hashlib.sha256()
    h.update(f"{CANON_RECIPE}|size={size}\n".encode())
    for rel, ident, fhash in sorted(rows):
        h.update(f"{rel}\t{ident}\t{fhash}\n".encode())
    for rel in sorted(dropped):   # a dropped duplicate is still part of what was read
        h.update(f"dropped\t{rel}\n".encode())
    if attr_cols:
        h.update(("attributes\t" + "\t".join(attr_cols) + "\n").encode())
        for ident in sorted(attrs):
            h.update((ident + "\t" + "\t".join(attrs[ident][c] for c in attr_cols) + "\n").encode())
    return h.hexdigest()[:12]


def load_image_folder(
    root: str | Path, size: int, name: str | None = None, progress: bool = True
) -> FaceDataset:
    """Load an identity-folder dataset into canonical (N, size, size, 3) uint8 RGB + manifest.

    Identities are naturally sorted by folder name and numbered 0..K-1 in that order;
    images within a folder are naturally sorted by file name. See the module docstring
    for the canonicalisation recipe (BICUBIC resize), duplicates, litter and errors."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    size = int(size)
    root = Path(root)
    ignored: list[str] = []
    identities = scan_folder(root, ignored)
    names = [n for n, _ in identities]

    attr_cols: list[str] = []
    attrs: dict[str, dict[str, str]] = {}
    attr_path = root / ATTRIBUTES_FILE
    if attr_path.exists() and not attr_path.is_dir():
        attr_cols, attrs = _read_attributes(attr_path, names)

    total = sum(len(files) for _, files in identities)
    images = np.empty((total, size, size, 3), dtype=np.uint8)   # filled in place: one copy of the pixels
    decoded: list[tuple[int, str, Path, int, str, str]] = []    # ident, name, file, row, content, file hash
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"ingest {name or root.name}", unit="img", disable=not progress, leave=False)
    try:
        for ident, (ident_name, files) in enumerate(identities):
            for f in files:
                arr, fhash = decode_image(f, size)
                images[len(decoded)] = arr
                decoded.append((ident, ident_name, f, len(decoded), content_hash(arr), fhash))
                bar.update(1)
    finally:
        bar.close()

    kept, duplicates = _drop_duplicates(decoded, root)
    _refuse_cross_identity(kept)
    counts = {}
    for ident, *_ in kept:
        counts[ident] = counts.get(ident, 0) + 1
    for ident, ident_name, f, *_ in kept:
        if counts[ident] < 2:
            dropped = [d["dropped"] for d in duplicates if d["identity_name"] == ident_name]
            raise DataError(f.parent, f"only 1 distinct image: {', '.join(dropped)} "
                                      f"{'is' if len(dropped) == 1 else 'are'} the same photo as "
                                      f"{f.relative_to(root).as_posix()}; at least 2 are needed for verification",
                            hint="add another photo of this person or remove the folder")

    records = []
    for i, (ident, ident_name, f, row, chash, fhash) in enumerate(kept):
        if row != i:
            images[i] = images[row]   # compact in place (i < row: rows move only forward)
        arr = images[i]
        rec = {
            "index": i,
            "path": f.relative_to(root).as_posix(),
            "identity": ident,
            "identity_name": ident_name,
            "content_hash": chash,
            "file_hash": fhash,
            "height": size,
            "width": size,
            "channels": 3,
            "pixel_min": int(arr.min()),
            "pixel_max": int(arr.max()),
            "identity_images": counts[ident],
        }
        for c in attr_cols:
            rec[c] = attrs[ident_name][c]
        records.append(rec)
    images = images[:len(kept)]

    manifest = _manifest_frame(records, attr_cols)
    version = _version(size, [(r["path"], r["identity_name"], r["file_hash"]) for r in records], attr_cols, attrs,
                       dropped=[d["dropped"] for d in duplicates])
    return FaceDataset(images=images, manifest=manifest, name=name or root.name, version=version,
                       duplicates=duplicates, ignored=ignored)


def _drop_duplicates(decoded: list[tuple], root: Path) -> tuple[list[tuple], list[dict]]:
    """Keep one of each set of equal images within one identity: the shortest file name
    (then natural order), so "4.pgm" stays and "4 (copy).pgm" goes. Equal means equal
    canonical pixels, so one photo saved under two names, or as PNG and BMP, counts once: a
    copy would enter both sides of a genuine verification pair."""
    groups: dict[tuple, list[tuple]] = {}
    for row in decoded:
        groups.setdefault((row[0], row[4]), []).append(row)
    keeper = {key: min(rows, key=lambda r: (len(r[2].name), natural_key(r[2].name)))[2]
              for key, rows in groups.items()}
    kept, duplicates = [], []
    for row in decoded:
        ident, ident_name, f, _, chash, _ = row
        chosen = keeper[ident, chash]
        if f == chosen:
            kept.append(row)
        else:
            duplicates.append({"identity_name": ident_name, "kept": chosen.relative_to(root).as_posix(),
                               "dropped": f.relative_to(root).as_posix()})
    return kept, duplicates


def _refuse_cross_identity(kept: list[tuple]) -> None:
    """The same image under two identities: a labelling error that would put one photo on
    both sides of the identity-disjoint split (and make an impostor pair of a photo with itself)."""
    owner: dict[str, tuple] = {}
    clashes = []
    for row in kept:
        ident, chash = row[0], row[4]
        if chash in owner and owner[chash][0] != ident:
            clashes.append((owner[chash], row))
        owner.setdefault(chash, row)
    if clashes:
        (_, name_a, file_a, *_), (_, name_b, file_b, *_) = clashes[0]
        more = f" ({len(clashes)} such images in all; the first is named)" if len(clashes) > 1 else ""
        raise DataError(file_b, f"same photo as {file_a} (identity {name_b!r} and identity {name_a!r}){more}",
                        hint="a photo belongs to one person: remove it from the wrong identity's folder")


def _manifest_frame(records: list[dict], attr_cols: list[str]) -> pd.DataFrame:
    cols = list(BASE_COLUMNS) + list(attr_cols)
    df = pd.DataFrame.from_records(records, columns=cols)
    for c in ("index", "identity", "height", "width", "channels", "pixel_min", "pixel_max", "identity_images"):
        df[c] = df[c].astype("int64")
    for c in ["path", "identity_name", "content_hash", "file_hash", *attr_cols]:
        df[c] = df[c].astype(str)
    return df


# --------------------------------------------------------------------------- store


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_dataset(ds: FaceDataset, path: str | Path) -> Path:
    """Write ``ds`` to the store directory ``path`` (created if needed); returns the path.

    Store layout: ``images-<token>.npz`` (key ``images``, uncompressed, no pickle),
    ``manifest-<token>.parquet`` and ``dataset.json`` (name, version, file names and their
    sha256). ``<token>`` is a hash of the content, so the data files are never overwritten
    with different content; each file is written to a temp file and ``os.replace``d, and
    ``dataset.json`` is replaced last: that is the commit point, so a failed or interrupted
    write leaves an existing store readable as it was. Data files no longer referenced
    are removed after the commit."""
    path = Path(path)
    images = np.ascontiguousarray(ds.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be (N, S, S, 3) uint8, got {images.shape} {images.dtype}")
    if len(ds.manifest) != images.shape[0]:
        raise ValueError(f"manifest has {len(ds.manifest)} rows but there are {images.shape[0]} images")
    path.mkdir(parents=True, exist_ok=True)

    h = hashlib.sha256()
    h.update(f"{ds.name}\n{ds.version}\n{images.shape}\n".encode())
    h.update(images.tobytes())
    try:
        h.update(pd.util.hash_pandas_object(ds.manifest, index=True).to_numpy().tobytes())
    except TypeError:  # unhashable cells in an object column
        h.update(ds.manifest.to_csv().encode())
    h.update("\t".join(map(str, ds.manifest.columns)).encode())
    token = h.hexdigest()[:16]
    img_name = f"images-{token}.npz"
    man_name = f"manifest-{token}.parquet"

    atomic_write(path / img_name, lambda fh: np.savez(fh, images=images))
    atomic_write(path / man_name, lambda fh: ds.manifest.to_parquet(fh, index=False))
    meta = {
        "format": _STORE_FORMAT,
        "name": ds.name,
        "version": ds.version,
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[1]),
        "images_file": img_name,
        "images_sha256": _sha256_file(path / img_name),
        "manifest_file": man_name,
        "manifest_sha256": _sha256_file(path / man_name),
        "duplicates": list(ds.duplicates),
        "ignored": list(ds.ignored),
    }
    payload = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path / _STORE_META, lambda fh: fh.write(payload))

    for stale in list(path.glob("images-*.npz")) + list(path.glob("manifest-*.parquet")):
        if stale.name not in (img_name, man_name):
            try:
                stale.unlink()
            except OSError:
                pass
    return path


def load_dataset(path: str | Path) -> FaceDataset:
    """Read a store written by :func:`save_dataset` (checks file hashes; never unpickles)."""
    path = Path(path)
    meta_path = path / _STORE_META
    if not meta_path.is_file():
        raise DataError(path, f"not a dataset store (no {_STORE_META})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(meta_path, f"cannot be read: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != _STORE_FORMAT:
        raise DataError(meta_path, f"unknown store format {meta.get('format') if isinstance(meta, dict) else None!r}")
    keys = ("name", "version", "images_file", "images_sha256", "manifest_file", "manifest_sha256")
    missing = [k for k in keys if not isinstance(meta.get(k), str)]
    if missing:
        raise DataError(meta_path, f"missing or invalid field(s) {missing}")
    if any(Path(meta[k]).name != meta[k] for k in ("images_file", "manifest_file")):
        raise DataError(meta_path, "data file names must be plain names inside the store")
    img_path = path / meta["images_file"]
    man_path = path / meta["manifest_file"]
    for p, key in ((img_path, "images_sha256"), (man_path, "manifest_sha256")):
        if not p.is_file():
            raise DataError(p, "missing from dataset store")
        if _sha256_file(p) != meta[key]:
            raise DataError(p, "checksum mismatch (store damaged or modified)")
    try:
        with np.load(img_path, allow_pickle=False) as z:
            images = z["images"]
        manifest = pd.read_parquet(man_path)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(path, f"cannot be read as a dataset store: {e}") from e
    if len(manifest) != images.shape[0]:
        raise DataError(path, f"manifest has {len(manifest)} rows but there are {images.shape[0]} images")
    return FaceDataset(images=images, manifest=manifest, name=meta["name"], version=meta["version"],
                       duplicates=list(meta.get("duplicates", [])), ignored=list(meta.get("ignored", [])))
