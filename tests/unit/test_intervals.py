"""The bootstrap over identities: its intervals cover the truth at about their nominal rate
in seeded simulations of clustered face data, where a bootstrap over images does not; its
weighted TAR@FAR is the plain one when every weight is 1; replicates are shared by identity."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from components.metrics.intervals import IdentityBootstrap, as_arrays, as_lists, interval, with_values
from components.metrics.operating_point import all_pairs_operating_point
from components.reporting.scores import compute_scores, score_intervals


def _clustered(rng, n_ids=60, per_id=6):
    """Per-identity success rates p_i ~ Beta(2, 3) (mean 0.4), `per_id` Bernoulli(p_i)
    outcomes each: the images of a person move together, as attack outcomes do."""
    p = rng.beta(2.0, 3.0, size=n_ids)
    ids = np.repeat(np.arange(n_ids), per_id)
    return (rng.random(ids.size) < p[ids]).astype(float), ids


def test_identity_bootstrap_covers_the_truth_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    truth, sims, covered, naive_covered = 0.4, 300, 0, 0
    for i in range(sims):
        y, ids = _clustered(rng)
        boot = IdentityBootstrap(ids, replicates=200, seed=i)
        lo, hi = interval(boot.mean(y, ids))
        covered += lo <= truth <= hi
        # the same bootstrap over images (each image its own unit) ignores the clustering
        naive = IdentityBootstrap(np.arange(y.size), replicates=200, seed=i)
        lo, hi = interval(naive.mean(y, np.arange(y.size)))
        naive_covered += lo <= truth <= hi
    rate, naive_rate = covered / sims, naive_covered / sims
    assert 0.90 <= rate <= 0.985, rate            # nominal 0.95; s.e. of a rate over 300 runs ~0.013
    assert naive_rate < rate - 0.08, (naive_rate, rate)   # image-level intervals are too narrow


def test_weighted_auc_intervals_cover_the_true_auc():
    """Identity-level membership scores: members ~ N(d, 1), non-members ~ N(0, 1), AUC =
    Phi(d / sqrt 2); the interval of the weighted AUC covers it about 95% of the time."""
    rng = np.random.default_rng(1)
    d, sims, covered = 0.5, 120, 0
    truth = norm.cdf(d / np.sqrt(2.0))
    for i in range(sims):
        y = np.r_[np.ones(50), np.zeros(50)].astype(int)
        s = rng.normal(size=100) + d * y
        ids = np.arange(100)
        boot = IdentityBootstrap(ids, replicates=150, seed=i)
        lo, hi = interval(boot.statistic(lambda w: roc_auc_score(y, s, sample_weight=w), ids))
        covered += lo <= truth <= hi
    assert 0.87 <= covered / sims <= 1.0, covered / sims


def test_tar_replicates_with_unit_weights_are_the_plain_tar():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(40), 5)
    centres = rng.normal(size=(40, 16))
    templates = centres[ids] + 0.9 * rng.normal(size=(ids.size, 16))
    pairs = all_pairs_operating_point(templates, ids, max_rate=1e-2)
    boot = IdentityBootstrap(ids, replicates=3, seed=0)
    boot.table[:] = 1.0
    for rate in (1e-3, 1e-2):
        assert pairs.tar_replicates(rate, boot) == pytest.approx([pairs.tar(rate)] * 3)
    boot = IdentityBootstrap(ids, replicates=200, seed=0)
    lo, hi = interval(pairs.tar_replicates(1e-2, boot))
    assert lo < pairs.tar(1e-2) < hi and 0.0 <= lo < hi <= 1.0


def test_one_identity_weighs_the_same_in_every_figure_of_a_replicate():
    boot = IdentityBootstrap(["a", "b", "c", "d"], replicates=50, seed=3)
    w1 = boot.weights(np.array(["b", "d"]))
    w2 = boot.weights(np.array(["d", "b", "b"]))
    assert np.array_equal(w1[:, 1], w2[:, 0]) and np.array_equal(w1[:, 0], w2[:, 2])
    # the same seed gives the same table; another seed another
    assert np.array_equal(IdentityBootstrap(["a", "b", "c", "d"], 50, seed=3).table, boot.table)
    assert not np.array_equal(IdentityBootstrap(["a", "b", "c", "d"], 50, seed=4).table, boot.table)
    with pytest.raises(ValueError, match="outside the bootstrap"):
        boot.weights(np.array(["e"]))


def test_score_intervals_follow_the_scores_replicate_by_replicate():
    rng = np.random.default_rng(4)
    n = 200
    adv = rng.uniform(0.2, 0.4, n)
    acc, base_acc = rng.uniform(0.80, 0.85, n), rng.uniform(0.88, 0.9, n)
    attacks = {"model_inversion": {"advantage": 0.3, "top1": 0.31},
               "attribute_inference": {"skin": {"advantage": 0.1}, "advantage": 0.1}}
    utility = {"verification_accuracy": 0.82, "tar_at_far_1e-3": 0.5}
    base = {"verification_accuracy": 0.89, "tar_at_far_1e-3": 0.6}
    reps = {"model_inversion": as_lists({"advantage": adv}),
            "attribute_inference": as_lists({"skin.advantage": np.full(n, 0.05), "advantage": np.full(n, 0.05)})}
    ci = score_intervals(attacks, utility, base, None, reps, as_lists({"verification_accuracy": acc}),
                         as_lists({"verification_accuracy": base_acc}))
    # privacy = 1 - max advantage (no reconstruction attack): its interval is that of 1 - adv
    assert ci["privacy"] == pytest.approx(list(1.0 - np.percentile(adv, [97.5, 2.5])), abs=1e-6)
    ratio = np.minimum(1.0, np.minimum(acc / base_acc, 0.5 / 0.6))
    assert ci["utility"] == pytest.approx(list(np.percentile(ratio, [2.5, 97.5])), abs=1e-6)
    point = compute_scores(attacks, utility, base)
    assert ci["overall"][0] <= point["overall"] + 0.05 and ci["overall"][1] >= point["overall"] - 0.05
    # an undefined replicate (null) gives no score, the others still do
    reps["model_inversion"]["advantage"][0] = None
    assert "privacy" in score_intervals(attacks, utility, base, None, reps, {}, {})
    assert np.isnan(as_arrays(reps["model_inversion"])["advantage"][0])


def test_with_values_copies_on_write():
    block = {"skin": {"advantage": 0.1}, "advantage": 0.1}
    out = with_values(block, {"skin.advantage": 0.5, "advantage": 0.5})
    assert out == {"skin": {"advantage": 0.5}, "advantage": 0.5}
    assert block == {"skin": {"advantage": 0.1}, "advantage": 0.1}


def test_an_undefined_input_spoils_only_the_scores_that_read_it():
    """The attribute probe (outside dctdp's threat model) undefined in every replicate:
    privacy over the attacks in scope keeps its interval, privacy_all has none."""
    attacks = {"model_inversion": {"advantage": 0.3}, "attribute_inference": {"advantage": 0.1}}
    reps = {"model_inversion": as_lists({"advantage": np.linspace(0.2, 0.4, 50)}),
            "attribute_inference": as_lists({"advantage": np.full(50, np.nan)})}
    base = {"verification_accuracy": 0.9, "tar_at_far_1e-3": 0.5}
    ci = score_intervals(attacks, base, base, {"in_scope": ["model_inversion"]}, reps, {}, {})
    assert "privacy" in ci and "privacy_all" not in ci and ci["utility"] == [1.0, 1.0]


def test_figures_of_different_bootstrap_tables_are_not_combined():
    from components.reporting.metrics_file import build_metrics

    utility = {"verification_accuracy": 0.9, "verification_std": 0.01, "tar_at_far_1e-3": 0.5, "eer": 0.1,
               "rank1": 0.9, "bootstrap": "table-a"}
    results = {"baseline": {"utility": utility, "attacks": {}},
               "dctdp": {"utility": {**utility, "bootstrap": "table-b"}, "attacks": {}}}
    with pytest.raises(ValueError, match="different bootstrap tables"):
        build_metrics({"name": "x"}, results)
    results["dctdp"]["utility"]["bootstrap"] = "table-a"
    assert "bootstrap" not in build_metrics({"name": "x"}, results)["defenses"]["dctdp"]["utility"]
