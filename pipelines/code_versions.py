"""Dagster code versions of the assets: a digest of the code each asset runs and of the
params it reads, so that the UI marks exactly the assets a change of code or params made
stale (and their downstream), and leaves the others fresh.

Which code and which params an asset depends on is listed here, by hand: the packages of
components/ it calls and its params paths (dotted). The lists err on the wide side; an
asset left out of ASSET_DEPENDENCIES gets no code version (Dagster then never calls it
stale for code)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg

from pipelines.resources import PROJECT_ROOT

__all__ = ["ASSET_DEPENDENCIES", "asset_code_version", "with_code_versions"]

_DEFENSES = ("dctdp", "ppfrfd", "hybrid", "facemae", "advface", "dvpf")
_MODELS = ("components/models", "components/training", "components/metrics", "components/freq",
           "components/config.py", "pipelines/assets/model_assets.py", "pipelines/tracking.py")
_DATA_IN = ("data.dir", "data.name", "data.source", "data.image_size", "data.synthetic", "data.min_identities",
            "data.attribute_values")

# asset -> (code: files or folders relative to the project, params: dotted paths)
ASSET_DEPENDENCIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "face_dataset": (("components/data", "pipelines/assets/data_assets.py"), _DATA_IN),
    "dataset_splits": (("components/data/splits.py", "components/data/views.py", "pipelines/assets/data_assets.py"),
                       ("data.splits", "data.split_seed", "data.holdout_per_identity", "data.pairs")),
    "baseline_fr_model": (_MODELS, ("baseline", "data.image_size")),
    "evaluation_fr_model": (_MODELS, ("evaluation", "data.image_size")),
    "protected_system": ((*_MODELS, "components/defenses"),
                         ("baseline", "seed", "intervals", "mlflow.registered_model_prefix", *_DEFENSES)),
    "defense_sweep": ((*_MODELS, "components/defenses", "components/attacks", "pipelines/assets/sweep_assets.py"),
                      ("sweeps", "attacks", "seed", "intervals", "baseline", *_DEFENSES)),
    "attack_results": (("components/attacks", "components/metrics", "components/defenses",
                        "pipelines/assets/attack_assets.py"), ("attacks", "seed", "intervals")),
    "privacy_utility_report": (("components/reporting", "components/metrics", "pipelines/assets/report_assets.py"),
                               ("defenses", "intervals")),
    "promotion_candidates": (("components/reporting/promotion.py", "pipelines/assets/promotion_assets.py"),
                             ("gates",)),
    "registered_model": (("components/reporting/promotion.py", "pipelines/assets/promotion_assets.py"),
                         ("gates",)),
}


def _files(paths: tuple[str, ...]) -> list[Path]:
    out = []
    for rel in paths:
        p = PROJECT_ROOT / rel
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def _param(params: dict, dotted: str):
    value = params
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def asset_code_version(asset: str, params: dict) -> str | None:
    """sha256 (16 hex) of the asset's code files and its params values; None when unlisted."""
    if asset not in ASSET_DEPENDENCIES:
        return None
    code, keys = ASSET_DEPENDENCIES[asset]
    h = hashlib.sha256()
    for path in _files(code):
        h.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        h.update(path.read_bytes())
    h.update(json.dumps({k: _param(params, k) for k in keys}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def with_code_versions(assets: list, params: dict) -> list:
    """The asset definitions with their code versions set for these params."""
    def versioned(spec: dg.AssetSpec) -> dg.AssetSpec:
        version = asset_code_version(spec.key.to_user_string(), params)
        return spec if version is None else spec.replace_attributes(code_version=version)

    return [a.map_asset_specs(versioned) for a in assets]
