"""The schema of params.yaml, so that a wrong key or value is refused before any work, with
the file, the line, the key path and the expected type, instead of a TypeError deep inside
training an hour later.

Each block is typed by the code that reads it: a defense's block by its `config_class`,
an attack's by its own, FR training by `TrainConfig`, the synthetic set by
`SyntheticConfig`; the pipeline's own blocks (data, gates, mlflow, ...) are declared here.
pydantic checks them strictly (no "3" for 3, no 1 for True, an int is a valid float) and
refuses unknown keys. The resolved profile is what is checked, so a key that is wrong in
`defaults` is reported there and one that a profile sets wrongly is reported in the profile.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

STRICT = ConfigDict(extra="forbid", strict=True)
OPEN = ConfigDict(extra="allow", strict=True)   # model kwargs: builder-specific extras are allowed


def _loosen(tp):
    """YAML has lists, not tuples: tuple[X, ...] is read as list[X]; bare dict/list as typed."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return list[args[0]] if args else list
    if tp is dict:
        return dict[str, Any]
    if tp is list:
        return list[Any]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return typing.Union[tuple(_loosen(a) for a in typing.get_args(tp))]
    return tp


class Backbone(BaseModel):
    model_config = OPEN
    name: Literal["resnet_small", "iresnet18", "iresnet50"] = None   # see components.models.BACKBONES
    embedding_dim: int = Field(None, ge=1)
    widths: list[int] = None
    blocks: list[int] = None
    stem_stride: int = None
    dropout: float = None


class Head(BaseModel):
    model_config = OPEN
    name: Literal["arcface", "cosface"] = None   # see components.models.heads.HEADS
    s: float = None
    m: float = None


@functools.cache
def _from_dataclass(cls) -> type[BaseModel]:
    """A strict model of a config dataclass; every field optional (a block overrides defaults).
    Dict fields with a known meaning (`train`, `backbone`, `probe`, ...) are typed too."""
    from components.attacks.attribute_inference import AttributeInferenceConfig
    from components.training.loop import TrainConfig

    nested = {"train": lambda: _from_dataclass(TrainConfig), "fr_train": lambda: _from_dataclass(TrainConfig),
              "public_fr_train": lambda: _from_dataclass(TrainConfig), "backbone": lambda: Backbone,
              "public_fr_backbone": lambda: Backbone, "probe": lambda: _from_dataclass(AttributeInferenceConfig)}
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        tp = nested[f.name]() if f.name in nested and cls is not TrainConfig else _loosen(hints[f.name])
        fields[f.name] = (tp, None)
    return create_model(f"{cls.__name__}Params", __config__=STRICT, **fields)


@functools.cache
def schema() -> type[BaseModel]:
    """The model of one resolved profile of params.yaml."""
    from components.attacks import ATTACKS
    from components.data.synthetic import SyntheticConfig
    from components.defenses import DEFENSES
    from components.training.loop import TrainConfig

    class Strict(BaseModel):
        model_config = STRICT

    class Data(Strict):
        source: Literal["synthetic", "folder"]
        dir: str
        name: str = Field(min_length=1)
        image_size: int = Field(ge=8)
        synthetic: _from_dataclass(SyntheticConfig)
        splits: dict[Literal["train", "val", "test", "public"], float]
        split_seed: int
        pairs: create_model("Pairs", __config__=STRICT, folds=(int, Field(ge=2)), pairs_per_fold=(int, Field(ge=1)),
                            seed=(int, ...))
        min_identities: int = Field(ge=2)
        holdout_per_identity: int = Field(ge=0)
        attribute_values: dict[str, list[str]] | None = None

        @field_validator("splits")
        @classmethod
        def _fractions(cls, v: dict) -> dict:
            missing = [s for s in ("train", "test", "public") if s not in v]
            if missing:
                raise ValueError(f"needs the splits train, test and public (missing {missing})")
            if any(f <= 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
                raise ValueError(f"fractions must be positive and sum to 1, got {v}")
            return v

    class FRBlock(Strict):
        backbone: Backbone
        head: Head
        train: _from_dataclass(TrainConfig)
        world_size: int = Field(1, ge=1)

    attack_models = {}
    for name, attack in ATTACKS.items():   # each block may name variants: overrides of the same block
        own = _from_dataclass(attack.config_class)
        attack_models[name] = create_model(f"{own.__name__}WithVariants", __base__=own,
                                           variants=(dict[str, own] | None, None))
    Attacks = create_model("Attacks", __config__=STRICT, **{n: (m, None) for n, m in attack_models.items()})
    defense_models = {n: _from_dataclass(d.config_class) for n, d in DEFENSES.items() if d.config_class}
    sweep_models = {n: create_model(f"{n}Sweep", __config__=STRICT, values=(list[float | str], ...),
                                    attacks=(list[Literal[tuple(ATTACKS)]], None), params=(m, None),
                                    attack_params=(Attacks, None), series=(dict[str, m], None))
                    for n, m in defense_models.items()}
    Sweeps = create_model("Sweeps", __config__=STRICT, **{n: (m, None) for n, m in sweep_models.items()})

    class Gates(Strict):
        utility_floor: float = Field(ge=0, le=1)
        privacy_floor: float = Field(ge=0, le=1)

    class MLflow(Strict):
        tracking_uri: str
        artifact_root: str
        experiment: str = Field(min_length=1)
        registered_model_prefix: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    class ModelChecks(Strict):
        min_embedding_std: float = Field(ge=0)

    class Intervals(Strict):
        replicates: int = Field(ge=2)

    return create_model(
        "Params", __base__=Strict,
        profile=(str, ...), seed=(int, ...), device=(Literal["auto", "cpu", "cuda"], ...), threads=(int, Field(ge=0)),
        workdir=(str, ...), reports_dir=(str, ...), log_face_images=(bool, ...),
        defenses=(list[Literal[tuple(DEFENSES)]], ...), data=(Data, ...), baseline=(FRBlock, ...),
        evaluation=(FRBlock, ...), attacks=(Attacks, ...), sweeps=(Sweeps, None),
        model_checks=(ModelChecks, ...), intervals=(Intervals, ...), gates=(Gates, ...), mlflow=(MLflow, ...), **{n: (m, None) for n, m in defense_models.items()})


@dataclasses.dataclass(frozen=True)
class Problem:
    """One wrong entry: the key path in the resolved params, what was expected, what was
    found (`message`: `expected` is the config class's own sentence)."""

    loc: tuple
    expected: str
    found: Any = None
    missing: bool = False
    message: bool = False


def _expected(err: dict) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "no such key"
    if err["type"] == "missing":
        return "a value (the key is missing)"
    if err["type"] == "value_error":
        return msg.removeprefix("Value error, ")
    for prefix in ("Input should be ", "Value should be ", "String should "):
        if msg.startswith(prefix):
            rest = msg[len(prefix):]
            if prefix == "String should ":
                return "a string that should " + rest
            return "a number " + rest if rest.startswith(("greater", "less")) else rest
    return msg[:1].lower() + msg[1:]


def _trim(loc: tuple, params: dict) -> tuple:
    """The part of pydantic's loc that names keys of the input (union members are dropped)."""
    node, out = params, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            out.append(part)
        else:
            if not out or isinstance(node, dict):
                out.append(part)   # a missing or unknown key: still named
            break
    return tuple(out)


def _blocks(params: dict):
    """(key path, config class, block) of every block a config class reads, as the code
    will build it (a defense's `train` over the baseline's, a sweep's params over the block)."""
    from components.attacks import ATTACKS
    from components.defenses import DEFENSES
    from components.training.loop import TrainConfig

    base_train = params["baseline"]["train"]
    for block in ("baseline", "evaluation"):
        yield (block, "train"), TrainConfig, params[block]["train"]
    from components.attacks.variants import split_variants
    from components.config import deep_merge

    for name, attack in ATTACKS.items():
        own, variants = split_variants(params["attacks"].get(name))
        yield ("attacks", name), attack.config_class, own
        for variant, overrides in variants.items():
            yield ("attacks", name, "variants", variant), attack.config_class, deep_merge(own, overrides)
    for name, defense in DEFENSES.items():
        if defense.config_class is None or name not in params:
            continue
        block = params[name] or {}
        yield (name,), defense.config_class, block
        if "train" in block:
            yield (name, "train"), TrainConfig, {**base_train, **block["train"]}
        sweep = (params.get("sweeps") or {}).get(name) or {}
        if sweep.get("params"):
            yield ("sweeps", name, "params"), defense.config_class, deep_merge(block, sweep["params"])
        for series, overrides in (sweep.get("series") or {}).items():
            yield (("sweeps", name, "series", series), defense.config_class,
                   deep_merge(deep_merge(block, sweep.get("params") or {}), overrides or {}))


def _built(params: dict) -> list[Problem]:
    """The checks each config class makes of itself (ranges, combinations), on its block."""
    from components.config import config_from

    problems = []
    for loc, cls, block in _blocks(params):
        try:
            cfg = config_from(cls, block)          # runs __post_init__
            if hasattr(cfg, "validate"):
                cfg.validate()
        except (ValueError, TypeError) as err:
            problems.append(Problem(loc, str(err), message=True))
    return problems


def check(params: dict) -> list[Problem]:
    """The problems of a resolved profile (empty when it is valid)."""
    try:
        schema().model_validate(params)
        return _built(params)
    except ValidationError as err:
        merged: dict[tuple, Problem] = {}
        for e in err.errors():
            loc = _trim(tuple(e["loc"]), params)
            found = e.get("input") if e["type"] not in ("missing",) else None
            prev = merged.get(loc)
            expected = _expected(e)
            if prev is not None and expected not in prev.expected:
                expected = f"{prev.expected} or {expected}"
            merged[loc] = Problem(loc, expected, found, e["type"] == "missing", e["type"] == "value_error")
        return list(merged.values())
    return []
