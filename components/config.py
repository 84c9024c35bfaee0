"""Profiles from params.yaml: `defaults` deep-merged with one profile, then overrides.

One place resolves the knobs so that the Dagster resources, the CLI, DVC and the tests
read the same numbers. `{profile}` and `{tmp}` in string values are expanded."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("ci", "demo", "paper")


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: `override` merged into `base`, recursing into nested dicts."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _expand(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _expand(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, names) for v in value]
    return value


def load_params(path: str | Path = "params.yaml", profile: str = "demo",
                overrides: dict | None = None) -> dict:
    """The resolved parameters of `profile` (with `profile` set in the result)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found")
    raw = yaml.safe_load(path.read_text()) or {}
    profiles = raw.get("profiles", {})
    if profile not in profiles:
        raise ValueError(f"{path}: unknown profile {profile!r}; known: {sorted(profiles)}")
    params = deep_merge(raw.get("defaults", {}), profiles[profile] or {})
    params = deep_merge(params, overrides or {})
    params["profile"] = profile
    return _expand(params, {"profile": profile, "tmp": tempfile.gettempdir()})


def resolve_path(value: str | Path, root: str | Path) -> Path:
    """`value` as an absolute path, relative ones taken from the project `root`."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(root) / p


def config_from(cls, params: dict | None):
    """Dataclass `cls` with the overrides in `params`; an unknown key is an error that names it."""
    params = dict(params or {})
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return cls(**params)
