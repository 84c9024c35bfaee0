"""Membership and attribute inference on the attack-test world (tests/attacks/conftest.py:
60 synthetic identities x 8 images at 32 px; 30 train = members, 15 test = non-members,
15 public = calibration; a baseline trained 10 epochs on the train split).

The claims are chosen so that a broken attack fails them:
* membership: the memorising baseline is clearly detected (measured AUC 0.99, TPR@FPR=1e-2
  0.93); a model that never saw anyone (untrained, seeded) stays near chance (measured AUC
  0.60). With 30 vs 15 identities the AUC of a null attack has a standard deviation of
  about sqrt((30 + 15 + 1) / (12 * 30 * 15)) = 0.09, so the null tolerance is 0.15.
* attributes: a probe finds skin tone in baseline templates (measured balanced accuracy
  0.92 vs chance 0.33, 1.24 bits) and in a hand-built template that is the face centre's
  mean colour (0.86, 1.0 bits); the same column shuffled across identities gives chance
  (|bacc - chance| <= 0.08 measured over three shuffles) and no leakage (0 bits).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from components.attacks.attribute_inference import ATTACK as ATTRIBUTE, AttributeInference, leakage_measures
from components.attacks.base import NotApplicable
from components.attacks.membership_inference import ATTACK as MEMBERSHIP, MembershipInference, membership_measures
from components.defenses.base import ProtectedSystem
from components.defenses.baseline import BaselineSystem
from components.models.fr_model import build_fr_model

MIA_KEYS = {"auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "advantage", "n_members", "n_non_members"}
ATTR_KEYS = {"balanced_accuracy", "chance", "leakage_bits", "advantage"}


class TemplateOnly(ProtectedSystem):
    """The baseline's backbone without its head: only templates can be queried."""

    defense = "template_only"

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def embed(self, representation):
        return self.backbone(representation)


class CentreColour(ProtectedSystem):
    """A template built to carry skin tone: the mean colour of the 8x8 face centre (plus a
    fixed random linear expansion and an offset, so it looks like a 19-d template)."""

    defense = "centre_colour"

    def __init__(self):
        super().__init__()
        self.register_buffer("mix", torch.randn(3, 16, generator=torch.Generator().manual_seed(0)))

    def embed(self, x):
        c = x[:, :, 12:20, 12:20].mean((2, 3))
        return torch.cat([c, c @ self.mix], 1) + 1.0


def _shuffled(manifest, column: str, seed: int):
    """The column's per-identity values permuted across identities (each identity stays consistent)."""
    per_id = manifest.groupby("identity")[column].first()
    perm = np.random.default_rng(seed).permutation(per_id.to_numpy())
    return manifest["identity"].map(dict(zip(per_id.index, perm)))


def _finite(d: dict) -> bool:
    """Rates are finite floats; counts (n_members, n_non_members) are ints."""
    return all(isinstance(v, int) if k.startswith("n_") else isinstance(v, float) and math.isfinite(v)
               for k, v in d.items())


# ------------------------------------------------------------------------------ membership


def test_membership_measures_unit():
    y = np.array([1, 1, 1, 0, 0, 0])
    assert membership_measures(y, [3, 2, 1.5, 1, 0, -1]) == {"auc": 1.0, "tpr_at_fpr_1e-2": 1.0, "tpr_at_fpr_1e-3": 1.0,
                                                             "advantage": 1.0, "n_members": 3, "n_non_members": 3}
    worst = membership_measures(y, [-3, -2, -1.5, 1, 0, 2])
    assert worst["auc"] == 0.0 and worst["advantage"] == 0.0 and worst["tpr_at_fpr_1e-2"] == 0.0   # floored
    # conservative low-FPR reading: one non-member above two members -> TPR at FPR=0 is 1/3
    assert membership_measures(y, [3, 1, 0.5, 2, 0, -1])["tpr_at_fpr_1e-2"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        membership_measures([1, 1], [0.1, 0.2])


def test_membership_detects_the_memorising_baseline(world, tmp_path):
    result = MEMBERSHIP.run(world.context(world.baseline_system(), {}, tmp_path=tmp_path))
    m = result.measures
    assert set(m) == MIA_KEYS and _finite(m), m
    assert m["auc"] > 0.85, m                      # measured 0.99
    assert m["tpr_at_fpr_1e-2"] > 0.3, m           # measured 0.93
    assert m["advantage"] == pytest.approx(max(0.0, 2 * m["auc"] - 1))
    assert (m["n_members"], m["n_non_members"]) == (30, 15)
    s = result.strength
    assert (s["members"], s["non_members"], s["calibration_identities"]) == (30, 15, 15)
    assert s["score"] == "combined(template+confidence)"
    assert 0.0 <= s["calibrated_fpr"] <= 1.0 and 0.0 <= s["calibrated_tpr"] <= 1.0
    png = result.artifacts["membership_roc"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.artifacts["membership_scores"].stat().st_size > 0


def test_membership_stays_at_chance_on_a_model_that_never_saw_anyone(world):
    torch.manual_seed(0)
    fresh = build_fr_model(world.baseline.spec)   # same architecture, untrained
    system = BaselineSystem(fresh.backbone.eval(), fresh.head.eval(), fresh.spec).eval()
    m = MEMBERSHIP.run(world.context(system, {})).measures
    assert set(m) == MIA_KEYS and _finite(m), m
    assert abs(m["auc"] - 0.5) < 0.15, m           # measured 0.60; null sd ~0.09


def test_membership_template_score_without_a_head(world):
    system = TemplateOnly(world.baseline_system().backbone).eval()
    result = MEMBERSHIP.run(world.context(system, {}))
    assert result.strength["score"] == "template"
    assert result.measures["auc"] > 0.75, result.measures    # measured 0.92
    with pytest.raises(NotApplicable):
        MEMBERSHIP.run(world.context(system, {"score": "confidence"}))


def test_membership_not_applicable_and_bad_params(world):
    system = world.baseline_system()
    no_public = world.manifest.assign(split=world.manifest["split"].replace({"public": "val"}))
    with pytest.raises(NotApplicable, match="public"):
        MEMBERSHIP.run(dataclasses.replace(world.context(system, {}), manifest=no_public))
    with pytest.raises(ValueError, match="unknown"):
        MEMBERSHIP.run(world.context(system, {"shadow_models": 4}))
    assert isinstance(MEMBERSHIP, MembershipInference) and MEMBERSHIP.name == "membership_inference"
    assert MEMBERSHIP.applies_to(system) is None


# ------------------------------------------------------------------------------ attributes


def test_leakage_measures_unit():
    y = np.array([0, 0, 1, 1])
    perfect = leakage_measures(y, np.eye(2)[y])
    assert perfect["balanced_accuracy"] == 1.0 and perfect["chance"] == 0.5
    assert perfect["leakage_bits"] == pytest.approx(1.0, abs=1e-4)        # H = 1 bit, CE ~ 0
    prior = leakage_measures(y, np.full((4, 2), 0.5))
    assert prior["leakage_bits"] == pytest.approx(0.0, abs=1e-9)
    wrong = leakage_measures(y, np.eye(2)[1 - y])                          # CE >> H: floored at 0
    assert wrong["balanced_accuracy"] == 0.0 and wrong["leakage_bits"] == 0.0


def test_attribute_probe_finds_skin_in_baseline_templates_and_nothing_when_shuffled(world):
    manifest = world.manifest.assign(skin_shuffled=_shuffled(world.manifest, "skin", 0),
                                     sex_shuffled=_shuffled(world.manifest, "sex", 0))
    ctx = dataclasses.replace(world.context(world.baseline_system(), {}), manifest=manifest)
    result = ATTRIBUTE.run(ctx)
    m = dict(result.measures)
    top = m.pop("advantage")
    assert set(m) == {"sex", "skin", "skin_shuffled", "sex_shuffled"}
    for attr, block in m.items():
        assert set(block) == ATTR_KEYS and _finite(block), (attr, block)
        assert 0.0 <= block["balanced_accuracy"] <= 1.0 and block["leakage_bits"] >= 0.0
        assert block["advantage"] == pytest.approx(max(0.0, (block["balanced_accuracy"] - block["chance"])
                                                       / (1 - block["chance"])))
    assert top == max(b["advantage"] for b in m.values())               # the most leaked attribute
    assert m["skin"]["chance"] == pytest.approx(1 / 3) and m["sex"]["chance"] == 0.5
    skin = m["skin"]
    assert skin["balanced_accuracy"] >= skin["chance"] + 0.15, skin      # measured 0.92
    assert skin["leakage_bits"] > 0.2, skin                              # measured 1.24
    for attr in ("skin_shuffled", "sex_shuffled"):
        b = m[attr]
        assert abs(b["balanced_accuracy"] - b["chance"]) < 0.12, (attr, b)   # measured <= 0.08
        assert b["leakage_bits"] < 0.05 and b["advantage"] < 0.2, (attr, b)  # measured 0: nothing to learn
    s = result.strength
    assert s["probe"] == "MLP(64)" and s["test_identities"] == 60
    assert all(15 <= n < 60 for n in s["train_identities"].values())


def test_attribute_probe_finds_a_template_built_to_carry_skin(world):
    m = ATTRIBUTE.run(world.context(CentreColour().eval(), {})).measures
    assert m["skin"]["balanced_accuracy"] >= m["skin"]["chance"] + 0.15, m   # measured 0.86
    assert m["skin"]["leakage_bits"] > 0.2, m                                  # measured 1.0


def test_attribute_not_applicable_without_attribute_columns(world):
    system = world.baseline_system()
    bare = world.manifest.drop(columns=["sex", "skin"])
    with pytest.raises(NotApplicable, match="no sensitive attribute columns"):
        ATTRIBUTE.run(dataclasses.replace(world.context(system, {}), manifest=bare))
    constant = bare.assign(country="x")                    # one value: nothing to probe
    with pytest.raises(NotApplicable, match="country"):
        ATTRIBUTE.run(dataclasses.replace(world.context(system, {}), manifest=constant))
    with pytest.raises(ValueError, match="unknown"):
        ATTRIBUTE.run(world.context(system, {"epochs": 3}))
    assert isinstance(ATTRIBUTE, AttributeInference) and ATTRIBUTE.name == "attribute_inference"


def test_attribute_probe_folds_in_parallel_give_the_serial_result(world):
    system = CentreColour().eval()
    serial = ATTRIBUTE.run(world.context(system, {"n_jobs": 1})).measures
    parallel = ATTRIBUTE.run(world.context(system, {"n_jobs": 2})).measures
    assert parallel == serial
