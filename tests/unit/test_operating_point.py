"""The one convention for reading scores at a low false rate, and the all-pairs operating
point computed in row blocks, checked against brute force and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from components.metrics.operating_point import (all_pairs_operating_point, positive_rate_at, rate_above,
                                                threshold_at_rate)


@pytest.mark.parametrize("n_neg,rate", [(1000, 1e-3), (999, 1e-3), (150, 1e-2), (60, 1e-2), (20000, 1e-3)])
def test_the_false_rate_never_exceeds_the_target_and_is_the_largest_such(n_neg, rate):
    rng = np.random.default_rng(n_neg)
    neg = np.round(rng.normal(size=n_neg), 2)              # ties on purpose
    pos = np.round(rng.normal(1.5, 1.0, size=500), 2)
    tpr, t, n = positive_rate_at(pos, neg, rate)
    assert n == n_neg
    assert rate_above(neg, t) <= rate
    # no lower threshold among the scores keeps the false rate within the target
    lower = np.unique(neg[neg < t])
    if lower.size:
        assert rate_above(neg, lower[-1]) > rate
    # the best ROC point of sklearn within the target: "> t" reaches the same points as ">= thr"
    fpr, tp, _ = roc_curve(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg],
                             drop_intermediate=False)
    ok = fpr <= rate
    assert tpr == pytest.approx(tp[ok].max(), abs=1e-12)


def test_below_one_negative_per_rate_the_threshold_is_the_highest_negative():
    neg = np.array([0.1, 0.5, 0.3])
    assert threshold_at_rate(neg, 1e-2) == 0.5 and rate_above(neg, 0.5) == 0.0
    with pytest.raises(ValueError, match="rate must be in"):
        threshold_at_rate(neg, 1.0)


def test_all_pairs_in_blocks_equal_brute_force():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(30), 6)
    templates = rng.normal(size=(ids.size, 8)) + 2.0 * rng.normal(size=(30, 8))[ids]
    probes = templates + 0.1 * rng.normal(size=templates.shape)
    for probe in (None, probes):
        got = all_pairs_operating_point(templates, ids, probe_templates=probe, max_rate=1e-2, block=7)
        t = templates / np.linalg.norm(templates, axis=1, keepdims=True)
        p = t if probe is None else probe / np.linalg.norm(probe, axis=1, keepdims=True)
        a, b = np.triu_indices(ids.size, k=1)
        scores = np.einsum("ij,ij->i", t[a], p[b])
        same = ids[a] == ids[b]
        assert got.n_impostor == int((~same).sum()) and got.genuine.size == int(same.sum())
        np.testing.assert_allclose(np.sort(got.genuine), np.sort(scores[same]), atol=1e-12)
        for rate in (1e-3, 1e-2):
            expected, thr, _ = positive_rate_at(scores[same], scores[~same], rate)
            assert got.threshold(rate) == pytest.approx(thr, abs=1e-12)
            assert got.tar(rate) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="largest impostor scores"):
        all_pairs_operating_point(templates, ids, max_rate=1e-3).threshold(1e-2)
