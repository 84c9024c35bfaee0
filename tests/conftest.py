"""Shared test fixtures. Telemetry of every tool in the stack is switched off at import time,
before any test module imports great_expectations, mlflow, dagster or dvc."""

from __future__ import annotations

import os

from pipelines.telemetry import OFF

os.environ.update(OFF)   # forced, not defaulted: tests never report usage

import csv  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
ATT_FACES = REPO_ROOT.parent / "shared" / "data" / "att_faces"

# Pillow save format for each extension the factory can write.
_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "gif": "GIF",
    "bmp": "BMP",
    "pgm": "PPM",
    "ppm": "PPM",
}


@pytest.fixture(scope="session")
def att_faces_dir() -> Path:
    """The real ORL / AT&T faces folder next to the repo (40 identities x 10 PGM, + README)."""
    if not (ATT_FACES / "s1").is_dir():   # CI always has shared/ beside the clone: a missing copy is an error
        pytest.fail(f"test dataset not found at {ATT_FACES}; the tests expect ../shared/data/att_faces")
    return ATT_FACES


@pytest.fixture(scope="session")
def att_faces_small(att_faces_dir):
    """att_faces loaded once per session at 32x32 (read-only: copy before mutating)."""
    from components.data.ingest import load_image_folder

    return load_image_folder(att_faces_dir, size=32, progress=False)


def noise_image(rng: np.random.Generator, size=(24, 28), mode: str = "L") -> Image.Image:
    """Random-noise PIL image of (width, height) `size` in `mode` (L, RGB, RGBA, P, I;16)."""
    w, h = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
    if mode == "P":
        return noise_image(rng, size, "RGB").quantize(colors=16)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    raise ValueError(mode)


def write_image(path: Path, img: Image.Image, fmt: str) -> Path:
    """Save `img` to `path` in Pillow format name `fmt` (converting the mode where needed)."""
    if fmt in ("JPEG", "PPM", "BMP") and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    img.save(path, format=fmt)
    return path


@pytest.fixture
def make_face_folder():
    """Factory writing a small identity-folder dataset of random-noise images.

    make_face_folder(tmp_path, n_identities=3, n_images=3, fmt="png", size=(24, 28), mode="L",
                     name="faces", prefix="id_", extension=True, attributes=None, seed=0,
                     names=None) -> root

    - fmt: an extension ("png", "jpg", "gif", "bmp", "pgm", "ppm") or a list cycled over the
      images of the whole dataset, so one folder can mix formats;
    - n_images: an int, or a list with one count per identity (0 makes an empty folder);
    - identities are named f"{prefix}{i:04d}", or names[i] when names is given; files f"{j:02d}.{ext}" (no extension when
      extension=False);
    - attributes: None, or {column: [value per identity]} written to root/attributes.csv.
    """

    def _make(tmp_path: Path, n_identities: int = 3, n_images=3, fmt="png", size=(24, 28),
              mode: str = "L", name: str = "faces", prefix: str = "id_", extension: bool = True,
              attributes: dict[str, list[str]] | None = None, seed: int = 0,
              names: list[str] | None = None) -> Path:
        rng = np.random.default_rng(seed)
        root = Path(tmp_path) / name
        root.mkdir(parents=True, exist_ok=False)
        if names is not None:
            n_identities = len(names)
        counts = list(n_images) if isinstance(n_images, (list, tuple)) else [n_images] * n_identities
        fmts = list(fmt) if isinstance(fmt, (list, tuple)) else [fmt]
        k = 0
        made = []
        for i, count in enumerate(counts):
            ident = names[i] if names is not None else f"{prefix}{i:04d}"
            made.append(ident)
            folder = root / ident
            folder.mkdir()
            for j in range(count):
                ext = fmts[k % len(fmts)]
                k += 1
                fname = f"{j:02d}.{ext}" if extension else f"{j:02d}"
                write_image(folder / fname, noise_image(rng, size, mode), _FORMATS[ext])
        if attributes is not None:
            with open(root / "attributes.csv", "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                cols = list(attributes)
                writer.writerow(["identity_name", *cols])
                for i, ident in enumerate(made):
                    writer.writerow([ident, *(attributes[c][i] for c in cols)])
        return root

    return _make


from tests.world import World, world  # noqa: E402,F401  (session fixture shared by attack and defense tests)


@pytest.fixture(scope="module")
def one_thread():
    """Attack and defense tests on one torch thread: on two cores shared with other jobs,
    two OpenMP threads were measured 10-100x slower than one."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
