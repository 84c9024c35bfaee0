"""The model card a registered version carries: every figure it is given, with its interval,
the gate's verdict and the versions; nothing claimed that was not measured."""

from components.reporting.model_card import model_card

THREAT = {"protects": ["stored_templates"], "in_scope": ["template_inversion"], "note": "stolen database"}


def test_card_at_registration_says_privacy_is_pending():
    card = model_card("advface", THREAT, {"verification_accuracy": 0.9361, "ci95": {"verification_accuracy":
                                                                                   [0.91, 0.95]}},
                      data_version="abc123", code_version="deadbee", data_digest="f00.dir")
    assert "`advface`" in card and "stored_templates" in card and "template_inversion" in card
    assert "0.936 [0.910, 0.950]" in card and "TAR@FAR=1e-3: not measured" in card
    assert "measured by the report run" in card and "gate" not in card.lower().split("with the gate")[0]
    assert "abc123" in card and "f00.dir" in card and "deadbee" in card


def test_card_at_the_gate_carries_scores_and_verdict():
    card = model_card("dctdp", THREAT, {"verification_accuracy": 0.93}, data_version="v", code_version="c",
                      scores={"utility": 0.99, "privacy": 0.12, "overall": 0.3, "ci95": {"privacy": [0.1, 0.2]}},
                      gate={"passed": False, "reasons": ["privacy 0.120 below the floor 0.2"]})
    assert "privacy 0.120 [0.100, 0.200]" in card
    assert "Promotion gate: failed (privacy 0.120 below the floor 0.2)" in card
    assert "report run" not in card
