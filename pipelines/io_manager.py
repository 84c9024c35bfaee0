"""The IO manager: every asset value stored in a typed, pickle-free format, atomically.

- FaceDataset      -> components.data.ingest.save_dataset (npz + parquet manifest)
- dict of frames   -> one parquet file per key
- model bundles    -> torch.save, read back with torch.load(weights_only=True)
- other dicts      -> JSON
A partitioned asset read by an unpartitioned one through `dg.AssetIn(metadata=ALL_PARTITIONS)`
arrives as {partition: value} holding only the partitions that were materialized (the
report decides which it needs).

Two runs may materialize the same asset at once on one workdir (two `privface run`s, the UI
and the CLI): each value is written to a temp folder and swapped in under a file lock
(components.atomic.atomic_write_dir), and read under the same lock, so neither writer
fails on the other's swap and no reader sees a folder half-replaced."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from components.atomic import atomic_write_dir, path_lock, recover_dir

BUNDLE_KINDS = ("fr_model", "protected_system")


def _kind_of(obj) -> str:
    from components.data.ingest import FaceDataset

    if isinstance(obj, FaceDataset):
        return "dataset"
    if isinstance(obj, dict) and obj and all(isinstance(v, pd.DataFrame) for v in obj.values()):
        return "frames"
    if isinstance(obj, dict) and obj.get("kind") in BUNDLE_KINDS:
        return "bundle"
    if isinstance(obj, dict):
        return "json"
    raise TypeError(f"the privface IO manager cannot store {type(obj).__name__}")


def _write(kind: str, obj, folder: Path) -> None:
    import torch

    from components.data.ingest import save_dataset

    if kind == "dataset":
        save_dataset(obj, folder / "dataset")
    elif kind == "frames":
        for key, frame in obj.items():
            frame.to_parquet(folder / f"{key}.parquet", index=False)
    elif kind == "bundle":
        torch.save(obj, folder / "bundle.pt")
    else:
        (folder / "value.json").write_text(json.dumps(obj, indent=2, sort_keys=True))


def _read(kind: str, folder: Path):
    import torch

    from components.data.ingest import load_dataset

    if kind == "dataset":
        return load_dataset(folder / "dataset")
    if kind == "frames":
        return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
    if kind == "bundle":
        return torch.load(folder / "bundle.pt", map_location="cpu", weights_only=True)
    return json.loads((folder / "value.json").read_text())


def store(obj, folder: Path) -> None:
    """Write `obj` to `folder`, replacing what was there only once the write succeeded."""
    kind = _kind_of(obj)

    def write(tmp: Path) -> None:
        _write(kind, obj, tmp)
        (tmp / "kind").write_text(kind)

    atomic_write_dir(folder, write)


def fetch(folder: Path):
    with path_lock(folder):
        recover_dir(folder)
        if not (folder / "kind").is_file():
            raise FileNotFoundError(f"{folder}: nothing stored here (materialize the upstream asset first)")
        return _read((folder / "kind").read_text().strip(), folder)


class PrivfaceIOManager(dg.ConfigurableIOManager):
    """Stores asset values under `base_dir/<asset>/<partition or __all__>/`."""

    base_dir: str

    def _folder(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return Path(self.base_dir).joinpath(*asset_key.path, partition or "__all__")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        partition = context.asset_partition_key if context.has_asset_partitions else None
        store(obj, self._folder(context.asset_key, partition))

    def load_input(self, context: dg.InputContext):
        key = context.asset_key
        if not context.has_asset_partitions:
            return fetch(self._folder(key, None))
        if (context.definition_metadata or {}).get("all_partitions"):
            # an unpartitioned reader of a partitioned asset: what has been materialized
            return {k: fetch(self._folder(key, k)) for k in context.asset_partition_keys
                    if (self._folder(key, k) / "kind").is_file()}
        return fetch(self._folder(key, context.asset_partition_key))


ALL_PARTITIONS = {"all_partitions": True}
