"""Membership and attribute inference on the attack-test world (tests/world.py: 60
synthetic identities x 8 images at 32 px; 30 train = members, each with 2 held-out photos
no model trains on, 15 test = non-members, 15 public = calibration and reference models;
a baseline trained 10 epochs on the train photos).

The claims are chosen so that a broken attack fails them:
* membership: asked with photos the model trained on, the identity-level attack detects
  the members (positive control); the image-level attack tells training photos from
  held-out photos of the same people; a model that never saw anyone (untrained, seeded)
  stays near chance at both levels, and its advantage's 95% interval reaches 0. With 30
  vs 15 identities the AUC of a null attack has a standard deviation of about
  sqrt((30 + 15 + 1) / (12 * 30 * 15)) = 0.09, so the null tolerance is 0.15.
* attributes: a probe finds skin tone in baseline templates and in a hand-built template
  that is the face centre's mean colour; the same column shuffled across identities gives
  chance and no leakage (0 bits)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from components.attacks.attribute_inference import ATTACK as ATTRIBUTE, AttributeInference, leakage_measures
from components.attacks.base import NotApplicable
from components.attacks.membership_inference import ATTACK as MEMBERSHIP, MembershipInference, membership_measures
from components.defenses.base import ProtectedSystem
from components.defenses.baseline import BaselineSystem
from components.models.fr_model import build_fr_model

MIA_KEYS = {"auc", "advantage", "n_members", "n_non_members"}   # + TPRs where >= 100 / 1,000 negatives
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
    assert membership_measures(y, [3, 2, 1.5, 1, 0, -1]) == {"auc": 1.0, "advantage": 1.0, "n_members": 3,
                                                             "n_non_members": 3}
    worst = membership_measures(y, [-3, -2, -1.5, 1, 0, 2])
    assert worst["auc"] == 0.0 and worst["advantage"] == 0.0   # floored
    # a TPR at FPR 1e-2 needs 100 negatives behind it (one may pass), 1e-3 needs 1,000
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50), np.zeros(150)].astype(int)
    s = rng.normal(size=200) + 2.0 * y
    m = membership_measures(y, s)
    assert "tpr_at_fpr_1e-2" in m and "tpr_at_fpr_1e-3" not in m
    neg = np.sort(s[y == 0])[::-1]
    assert m["tpr_at_fpr_1e-2"] == pytest.approx(np.mean(s[y == 1] > neg[1]))   # 1 of 150 negatives may pass
    assert "tpr_at_fpr_1e-2" not in membership_measures(y, s, fpr_target=1e-3)   # the rate read, not the key
    with pytest.raises(ValueError):
        membership_measures([1, 1], [0.1, 0.2])


def test_identity_membership_asks_with_held_out_photos(world, tmp_path):
    result = MEMBERSHIP.run(world.context(world.baseline_system(), {}, tmp_path=tmp_path))
    m = result.measures
    assert set(m) == MIA_KEYS and _finite(m), m
    assert m["advantage"] == pytest.approx(max(0.0, 2 * m["auc"] - 1))
    assert (m["n_members"], m["n_non_members"]) == (30, 15)
    s = result.strength
    assert (s["members"], s["non_members"], s["calibration_identities"]) == (30, 15, 15)
    assert s["member_photos"].startswith("held-out photos") and s["photos_per_identity"] == 2
    # the table holds the identities asked about, the members' scores from their held-out photos
    table = pd.read_csv(result.artifacts["membership_scores"])
    assert set(table.loc[table["member"] == 1, "identity"]) == set(
        world.manifest.loc[world.manifest["split"] == "holdout", "identity"])
    assert s["score"] == "combined(template+confidence)"
    assert 0.0 <= s["calibrated_fpr"] <= 1.0 and 0.0 <= s["calibrated_tpr"] <= 1.0
    png = result.artifacts["membership_roc"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.artifacts["membership_scores"].stat().st_size > 0


def test_identity_membership_detects_members_asked_with_photos_the_model_trained_on(world):
    """The positive control of the machinery: call 2 TRAINING photos of each member its
    held-out photos; the baseline memorised them, and the identity-level attack sees it (the
    sample-level memorisation that the held-out design keeps out of the identity question)."""
    m = world.manifest
    trained = m[m["split"] == "train"].sort_values("index").groupby("identity").head(2)["index"]
    relabelled = m.assign(split=np.where(m["split"] == "holdout", "train",
                                         np.where(m["index"].isin(trained), "holdout", m["split"])))
    ctx = dataclasses.replace(world.context(world.baseline_system(), {}), manifest=relabelled)
    measures = MEMBERSHIP.run(ctx).measures
    assert measures["auc"] > 0.85, measures       # measured 0.99 before held-out photos existed


def test_image_level_membership_tells_training_photos_from_held_out_ones(world, tmp_path):
    """Training photos against held-out photos of the same 30 people (180 vs 60), calibrated
    by a reference model trained on the public identities only."""
    result = MEMBERSHIP.run(world.context(world.baseline_system(), {"level": "image", "references": 1,
                                                                     "reference_epochs": 4}, tmp_path=tmp_path))
    m, s = result.measures, result.strength
    assert (m["n_members"], m["n_non_members"]) == (180, 60) and s["references"] == 1
    assert m["auc"] > 0.6, (m, s)                 # the baseline memorises its training photos
    assert set(s["calibrated_signal_auc"]) == {"template", "confidence"}


@pytest.fixture(scope="module")
def untrained(world):
    torch.manual_seed(0)
    fresh = build_fr_model(world.baseline.spec)   # same architecture, untrained: it saw nobody
    return BaselineSystem(fresh.backbone.eval(), fresh.head.eval(), fresh.spec).eval()


@pytest.mark.parametrize("level", ["identity", "image"])
def test_membership_advantage_is_about_zero_on_a_model_that_never_saw_anyone(world, untrained, level):
    """The control: with nobody trained on, the advantage is ~0 and its 95% interval
    (bootstrap over identities) reaches 0."""
    from components.metrics.intervals import IdentityBootstrap

    ctx = dataclasses.replace(world.context(untrained, {"level": level, "references": 1, "reference_epochs": 4}),
                              bootstrap=IdentityBootstrap(world.manifest["identity"], replicates=200, seed=0))
    from components.attacks.variants import run_variants

    m = run_variants(MEMBERSHIP, ctx).measures
    assert abs(m["auc"] - 0.5) < 0.15, m           # null sd of the AUC ~0.09 (identity), ~0.04 (image)
    assert m["ci95"]["advantage"][0] == 0.0 and m["advantage"] < 0.3, m


def test_membership_template_score_without_a_head(world):
    system = TemplateOnly(world.baseline_system().backbone).eval()
    assert MEMBERSHIP.run(world.context(system, {})).strength["score"] == "template"
    result = MEMBERSHIP.run(world.context(system, {"level": "image", "references": 1, "reference_epochs": 4}))
    assert result.strength["score"] == "template"
    assert result.measures["auc"] > 0.65, result.measures    # training photos sit closer to their person
    with pytest.raises(NotApplicable):
        MEMBERSHIP.run(world.context(system, {"score": "confidence"}))


def test_membership_not_applicable_and_bad_params(world):
    system = world.baseline_system()
    no_public = world.manifest.assign(split=world.manifest["split"].replace({"public": "val"}))
    with pytest.raises(NotApplicable, match="public"):
        MEMBERSHIP.run(dataclasses.replace(world.context(system, {}), manifest=no_public))
    with pytest.raises(ValueError, match="unknown"):
        MEMBERSHIP.run(world.context(system, {"shadow_models": 4}))
    no_holdout = world.manifest.assign(split=world.manifest["split"].replace({"holdout": "train"}))
    with pytest.raises(NotApplicable, match="held-out photos"):
        MEMBERSHIP.run(dataclasses.replace(world.context(system, {"level": "image"}), manifest=no_holdout))
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


@pytest.mark.parametrize("fit_on", ["cross_fit", "public"])
def test_attribute_probe_finds_skin_in_baseline_templates_and_nothing_when_shuffled(world, fit_on):
    """Cross-fitted over all 60 identities the probe reads skin tone well and calibrated
    (bits); learning from the 15 public identities only and scored on the 15 test ones, it
    still reads it above chance (the public-only attacker of the threat model)."""
    manifest = world.manifest.assign(skin_shuffled=_shuffled(world.manifest, "skin", 0),
                                     sex_shuffled=_shuffled(world.manifest, "sex", 0))
    ctx = dataclasses.replace(world.context(world.baseline_system(), {"fit_on": fit_on}), manifest=manifest)
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
    assert skin["balanced_accuracy"] >= skin["chance"] + 0.15, skin
    if fit_on == "cross_fit":
        assert skin["leakage_bits"] > 0.2, skin
    tolerance = 0.12 if fit_on == "cross_fit" else 0.25   # 60 scored identities, or 15
    for attr in ("skin_shuffled", "sex_shuffled"):
        b = m[attr]
        assert abs(b["balanced_accuracy"] - b["chance"]) < tolerance, (attr, b)
        assert b["leakage_bits"] < 0.05, (attr, b)       # nothing to learn
    s = result.strength
    assert s["probe"] == "MLP(64)"
    if fit_on == "cross_fit":
        assert s["test_identities"] == 60 and all(15 <= n < 60 for n in s["train_identities"].values())
    else:
        assert s["test_identities"] == 15 and all(n == 15 for n in s["train_identities"].values())


def test_attribute_probe_finds_a_template_built_to_carry_skin(world):
    m = ATTRIBUTE.run(world.context(CentreColour().eval(), {"fit_on": "cross_fit"})).measures
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
    serial = ATTRIBUTE.run(world.context(system, {"n_jobs": 1, "fit_on": "cross_fit"})).measures
    parallel = ATTRIBUTE.run(world.context(system, {"n_jobs": 2, "fit_on": "cross_fit"})).measures
    assert parallel == serial
