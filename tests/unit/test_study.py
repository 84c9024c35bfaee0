"""The multi-seed study's arithmetic: mean and spread over seeds per defense and figure,
seed 0 left as the profile is, later seeds kept out of the profile's registry."""

import pytest

from components.reporting.study import seed_overrides, study_rows, study_table


def _metrics(acc: float, adv: float, privacy: float) -> dict:
    return {"defenses": {
        "baseline": {"utility": {"verification_accuracy": 0.9, "tar_at_far_1e-3": 0.5},
                     "attacks": {"model_inversion": {"advantage": 0.8}},
                     "scores": {"privacy": 0.1, "privacy_all": 0.1, "utility": 1.0, "overall": 0.18}},
        "dctdp": {"utility": {"verification_accuracy": acc, "tar_at_far_1e-3": 0.4},
                  "attacks": {"model_inversion": {"advantage": adv}},
                  "scores": {"privacy": privacy, "privacy_all": privacy, "utility": acc / 0.9,
                             "overall": 0.5, "ci95": {"privacy": [0.0, 1.0]}}}}}


def test_study_rows_give_mean_and_sample_spread_over_seeds():
    rows = study_rows([_metrics(0.80, 0.10, 0.60), _metrics(0.84, 0.20, 0.50), _metrics(0.82, 0.30, 0.70)])
    by = {(r["defense"], r["figure"]): r for r in rows}
    acc = by[("dctdp", "accuracy")]
    assert acc["values"] == [0.80, 0.84, 0.82] and acc["mean"] == pytest.approx(0.82)
    assert acc["sd"] == pytest.approx(0.02) and (acc["min"], acc["max"], acc["seeds"]) == (0.80, 0.84, 3)
    assert by[("dctdp", "model_inversion advantage")]["sd"] == pytest.approx(0.1)
    assert by[("baseline", "privacy")]["sd"] == 0.0
    table = study_table(rows)
    assert "| dctdp | 0.820 ± 0.020 |" in table and table.count("\n") == 3


def test_one_seed_has_no_spread_and_a_missing_figure_is_skipped():
    one = _metrics(0.8, 0.1, 0.6)
    del one["defenses"]["dctdp"]["scores"]["overall"]
    rows = study_rows([one])
    by = {(r["defense"], r["figure"]): r for r in rows}
    assert by[("dctdp", "accuracy")]["sd"] is None and ("dctdp", "overall") not in by
    assert "| dctdp | 0.800 |" in study_table(rows) and "n/a" in study_table(rows)
    with pytest.raises(ValueError):
        study_rows([])


def test_seed_overrides_leave_seed_zero_alone_and_keep_later_seeds_out_of_the_registry():
    base = {"seed": 0, "baseline": {"train": {"seed": 0}}, "mlflow": {"registered_model_prefix": "privface"}}
    assert seed_overrides(0, base) == {}
    two = seed_overrides(2, base)
    assert two["seed"] == 2 and two["baseline"]["train"]["seed"] == 2
    assert two["mlflow"]["registered_model_prefix"] == "privface-seed2"
