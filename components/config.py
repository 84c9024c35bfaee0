"""Profiles from params.yaml: `defaults` deep-merged with one profile, then overrides.

One place resolves the knobs so that the Dagster resources, the CLI, DVC and the tests
read the same numbers. `{profile}` and `{tmp}` in string values are expanded. A resolved
profile is checked against the schema (components/params_schema.py) before anyone reads
it: a mistake is a ParamsError naming the file, the line, the key and the expected type."""

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


class ParamsError(ValueError):
    """A params file that cannot be used: `problems` are lines "line N: key.path: what is
    wrong" (the file is named once, in the message)."""

    def __init__(self, path, problems: list[str], hint: str = "edit the file and run again"):
        self.path = str(path)
        self.problems = list(problems)
        self.hint = hint
        super().__init__(f"{self.path}: " + ("; ".join(self.problems) if len(self.problems) == 1 else
                                             f"{len(self.problems)} problems: " + "; ".join(self.problems)))


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(path, [f"cannot be read: {e}"]) from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ParamsError(path, [f"{where}not valid YAML: {what}"]) from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(path, [f"expected a mapping with `defaults` and `profiles`, found a {type(raw).__name__}"])
    return raw


def load_params(path: str | Path = "params.yaml", profile: str = "demo",
                overrides: dict | None = None, validate: bool = True) -> dict:
    """The resolved parameters of `profile` (with `profile` set in the result); checked
    against the schema unless `validate` is False."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(path, ["params file not found"], hint="pass an existing file with --params")
    raw = _read_yaml(path)
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict) or profile not in profiles:
        known = sorted(profiles) if isinstance(profiles, dict) else []
        raise ParamsError(path, [f"unknown profile {profile!r}; known: {known}"],
                          hint="choose a profile with --profile")
    for section, value in (("defaults", raw.get("defaults")), (f"profiles.{profile}", profiles[profile])):
        if value is not None and not isinstance(value, dict):
            raise ParamsError(path, [f"{section}: expected a mapping, found {value!r}"])
    params = deep_merge(raw.get("defaults") or {}, profiles[profile] or {})
    params = deep_merge(params, overrides or {})
    params["profile"] = profile
    params = _expand(params, {"profile": profile, "tmp": tempfile.gettempdir()})
    if validate:
        _validate(params, path, raw, profile, overrides or {})
    return params


def _validate(params: dict, path: Path, raw: dict, profile: str, overrides: dict) -> None:
    from components.params_schema import check

    problems = check(params)
    if problems:
        raise ParamsError(path, [_describe(p, path, raw, profile, overrides) for p in problems])


def _has(tree, keys: tuple) -> bool:
    for k in keys:
        if isinstance(tree, dict) and k in tree:
            tree = tree[k]
        elif isinstance(tree, list) and isinstance(k, int) and 0 <= k < len(tree):
            tree = tree[k]
        else:
            return False
    return True


def _describe(problem, path: Path, raw: dict, profile: str, overrides: dict) -> str:
    """ "line N: profiles.demo.baseline.train.epochs: expected a valid integer, found 'two'" """
    keys = tuple(problem.loc)
    key = ".".join(map(str, keys))
    section = None
    for where, tree in ((None, overrides), (("profiles", profile), (raw.get("profiles") or {}).get(profile)),
                        (("defaults",), raw.get("defaults"))):
        probe = keys if not problem.missing else keys[:-1]
        if probe and _has(tree, probe):
            section = where
            break
    if section is None and problem.missing:
        section = ("defaults",)
    found = "" if problem.missing else f", found {problem.found!r}"
    if problem.expected == "no such key":
        what = f"{key}: unknown key"
    elif problem.message:
        what = f"{key}: {problem.expected}"
    else:
        what = f"{key}: expected {problem.expected}{found}"
    if section is None:
        return f"{what} (set by the command's overrides)"
    full = (*section, *(keys if not problem.missing else keys[:-1]))
    line = _line_of(path, full)
    return f"{'line ' + str(line) + ': ' if line else ''}{'.'.join(section)}.{what}"


def _line_of(path: Path, keys: tuple) -> int | None:
    """The 1-based line of the key path `keys` in the YAML file (None if not found)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for k in keys:
        if isinstance(node, yaml.SequenceNode) and isinstance(k, int) and 0 <= k < len(node.value):
            node = node.value[k]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for knode, vnode in node.value:
            if knode.value == str(k):
                line, node = knode.start_mark.line + 1, vnode
                break
        else:
            break
    return line


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
