"""The promotion gate: a version becomes champion only above both floors and strictly better
than the champion the registry records; every refusal says which rule and with which numbers."""

import pytest

from components.reporting.promotion import CHALLENGER, CHAMPION, gate_verdict

GOOD = {"utility": 0.95, "privacy": 0.40, "overall": 0.5630}


def test_no_champion_and_both_floors_met_promotes():
    v = gate_verdict(GOOD, utility_floor=0.85, privacy_floor=0.2, champion=None, version="1")
    assert v.passed and v.alias == CHAMPION
    assert v.reasons == ("utility 0.9500 >= utility floor 0.8500", "privacy 0.4000 >= privacy floor 0.2000",
                         "no champion yet: nothing to beat")


def test_utility_below_its_floor_fails_with_the_numbers():
    v = gate_verdict({**GOOD, "utility": 0.80}, utility_floor=0.85, privacy_floor=0.2)
    assert not v.passed and v.alias == CHALLENGER
    assert "utility 0.8000 < utility floor 0.8500" in v.reasons
    assert "privacy 0.4000 >= privacy floor 0.2000" in v.reasons     # the other rules are still reported


def test_utility_exactly_at_the_floor_passes():
    assert gate_verdict({**GOOD, "utility": 0.85}, utility_floor=0.85, privacy_floor=0.2).passed


def test_privacy_below_its_floor_fails_even_with_perfect_utility():
    v = gate_verdict({"utility": 1.0, "privacy": 0.033, "overall": 0.064}, utility_floor=0.85, privacy_floor=0.2)
    assert not v.passed and v.alias == CHALLENGER
    assert "privacy 0.0330 < privacy floor 0.2000" in v.reasons


def test_unmeasured_privacy_fails_the_privacy_floor_even_at_zero():
    """No attack measured means no evidence of privacy, not a pass."""
    v = gate_verdict({"utility": 1.0}, utility_floor=0.0, privacy_floor=0.0)
    assert not v.passed
    assert any(r.startswith("no measured privacy score") and "0.0000" in r for r in v.reasons)


def test_a_better_model_beats_the_champion():
    v = gate_verdict(GOOD, 0.85, 0.2, champion={"version": "3", "overall": 0.5}, version="4")
    assert v.passed and "overall 0.5630 > champion v3's 0.5000" in v.reasons


@pytest.mark.parametrize("champion_overall", [0.5630, 0.60])
def test_equal_or_worse_than_the_champion_is_refused(champion_overall):
    v = gate_verdict(GOOD, 0.85, 0.2, champion={"version": "3", "overall": champion_overall}, version="4")
    assert not v.passed and v.alias == CHALLENGER
    assert f"overall 0.5630 <= champion v3's {champion_overall:.4f}" in v.reasons


def test_the_champion_itself_is_not_asked_to_beat_itself():
    """A re-run of the same weights (same version) keeps its alias rather than failing a tie."""
    v = gate_verdict(GOOD, 0.85, 0.2, champion={"version": "3", "overall": 0.5630}, version=3)
    assert v.passed and "already the champion (v3)" in v.reasons


def test_the_champion_itself_still_answers_to_raised_floors():
    v = gate_verdict(GOOD, 0.85, 0.5, champion={"version": "3", "overall": 0.5630}, version="3")
    assert not v.passed and "privacy 0.4000 < privacy floor 0.5000" in v.reasons


def test_a_champion_without_a_recorded_score_leaves_nothing_to_beat():
    v = gate_verdict(GOOD, 0.85, 0.2, champion={"version": "2", "overall": None}, version="5")
    assert v.passed and "champion v2 has no recorded overall score: nothing to beat" in v.reasons


def test_a_candidate_without_overall_cannot_beat_a_scored_champion():
    v = gate_verdict({"utility": 1.0}, 0.0, 0.0, champion={"version": "2", "overall": 0.3}, version="5")
    assert not v.passed
    assert "no overall score to compare with champion v2's 0.3000" in v.reasons


def test_floors_outside_the_unit_interval_are_refused():
    with pytest.raises(ValueError, match="privacy_floor"):
        gate_verdict(GOOD, 0.85, 20)


def test_verdict_serialises_for_the_io_manager():
    d = gate_verdict(GOOD, 0.85, 0.2).to_dict()
    assert d == {"passed": True, "alias": CHAMPION, "reasons": list(gate_verdict(GOOD, 0.85, 0.2).reasons)}
