"""params.yaml profiles: deep merge, expansion, and clear errors."""

from pathlib import Path

import pytest

from components.config import PROFILES, deep_merge, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_deep_merge_overrides_leaves_and_keeps_siblings():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = deep_merge(base, {"a": {"b": 9}, "d": [2]})
    assert out == {"a": {"b": 9, "c": 2}, "d": [2]}
    assert base["a"]["b"] == 1          # input untouched


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_with_every_knob(profile):
    p = load_params(ROOT / "params.yaml", profile)
    assert p["profile"] == profile
    for key in ("seed", "data", "baseline", "evaluation", "gates", "mlflow", "defenses", "workdir"):
        assert key in p
    assert "{profile}" not in p["workdir"] and "{tmp}" not in p["data"]["dir"]
    assert abs(sum(p["data"]["splits"].values()) - 1) < 1e-9


def test_profiles_differ_where_they_should():
    ci, demo, paper = (load_params(ROOT / "params.yaml", p) for p in ("ci", "demo", "paper"))
    assert ci["data"]["synthetic"]["identities"] < demo["data"]["synthetic"]["identities"]
    assert paper["data"]["image_size"] == 112 and paper["baseline"]["backbone"]["name"] == "iresnet50"
    assert demo["baseline"]["train"]["seed"] != demo["evaluation"]["train"]["seed"]
    assert demo["baseline"]["backbone"] != demo["evaluation"]["backbone"]


def test_unknown_profile_and_missing_file_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_params(ROOT / "params.yaml", "nope")
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "missing.yaml", "demo")
