"""params.yaml profiles: deep merge, expansion, and clear errors."""

from pathlib import Path

import pytest

from components.config import PROFILES, ParamsError, deep_merge, load_params

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
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml", "demo")


def _edited(tmp_path, old: str, new: str) -> Path:
    text = (ROOT / "params.yaml").read_text()
    assert text.count(old) == 1, old
    out = tmp_path / "params.yaml"
    out.write_text(text.replace(old, new))
    return out


def _line(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_a_wrong_type_names_the_line_the_key_path_and_the_expected_type(tmp_path):
    params = _edited(tmp_path, "    dctdp: {train: {epochs: 2}}", "    dctdp: {train: {epochs: two}}")
    with pytest.raises(ParamsError) as err:
        load_params(params, "ci")
    assert err.value.path == str(params)
    assert err.value.problems == [f"line {_line(params, 'epochs: two')}: profiles.ci.dctdp.train.epochs: "
                                  "expected a valid integer, found 'two'"]
    load_params(params, "demo")                      # the demo profile does not read the ci block


def test_unknown_keys_bad_choices_and_bounds_are_each_reported_where_they_are_set(tmp_path):
    params = _edited(tmp_path, "  device: auto ", "  device: gpu ")
    params.write_text(params.read_text().replace("    min_identities: 10\n", "    min_identities: 1\n    colour: 3\n")
                      .replace("  hybrid: {upsample: 4, energy", "  hybrid: {upsample: 4.5, energy"))
    with pytest.raises(ParamsError) as err:
        load_params(params, "demo")
    assert err.value.problems == [
        f"line {_line(params, 'device: gpu')}: defaults.device: expected 'auto', 'cpu' or 'cuda', found 'gpu'",
        f"line {_line(params, 'min_identities: 1')}: defaults.data.min_identities: "
        "expected a number greater than or equal to 2, found 1",
        f"line {_line(params, 'colour: 3')}: defaults.data.colour: unknown key",
        f"line {_line(params, 'upsample: 4.5')}: defaults.hybrid.upsample: expected a valid integer, found 4.5"]


def test_overrides_a_missing_key_and_yaml_syntax_are_reported(tmp_path):
    with pytest.raises(ParamsError, match=r"sweeps.dctdp.attacks.0: expected 'template_inversion'.*"
                                          r"found 'nope' \(set by the command's overrides\)"):
        load_params(ROOT / "params.yaml", "demo", {"sweeps": {"dctdp": {"attacks": ["nope"]}}})
    with pytest.raises(ParamsError, match=r"sweeps.dctdp.series.tface.mode: expected 'project' or 'tface'"):
        load_params(ROOT / "params.yaml", "demo", {"sweeps": {"dctdp": {"series": {"tface": {"mode": "paper"}}}}})
    params = _edited(tmp_path, "    split_seed: 0\n", "")
    missing = r"line \d+: defaults.data.split_seed: expected a value \(the key is missing\)"
    with pytest.raises(ParamsError, match=missing):
        load_params(params, "demo")
    params = _edited(tmp_path, "  seed: 0\n", "  seed: [0, 1\n")
    with pytest.raises(ParamsError, match=r"line 5, column \d+: not valid YAML"):
        load_params(params, "demo")
