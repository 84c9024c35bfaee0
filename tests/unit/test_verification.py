"""Verification metrics: agreement with sklearn / brute force, the 10-fold protocol's train/test
separation, identification, feature extraction and the benchmark result store."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_curve

from benchmarks.report import record
from components.metrics.embeddings import extract_features, to_model_tensor
from components.metrics.plots import roc_plot, score_histogram
from components.metrics.verification import (
    best_threshold,
    eer,
    evaluate_pairs,
    far_key,
    rank1,
    roc,
    tar_at_far,
    verification_10fold,
)

CONTRACT_KEYS = {"verification_accuracy", "verification_std", "tar_at_far_1e-3", "eer", "threshold"}


def _pairs(n, rng, sep=1.0, tie_decimals=None):
    labels = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + sep * labels
    if tie_decimals is not None:
        scores = np.round(scores, tie_decimals)
    return scores, labels


# ----------------------------------------------------------------------------- ROC family


@pytest.mark.parametrize("tie_decimals", [None, 1, 0])
def test_roc_equals_sklearn(tie_decimals):
    rng = np.random.default_rng(1)
    scores, labels = _pairs(3000, rng, tie_decimals=tie_decimals)
    fpr, tpr, thr = roc(scores, labels)
    s_fpr, s_tpr, s_thr = roc_curve(labels, scores, drop_intermediate=False)
    assert fpr.shape == s_fpr.shape
    np.testing.assert_allclose(fpr, s_fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, s_tpr, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(thr, s_thr)
    if tie_decimals is not None:
        assert fpr.shape[0] < scores.shape[0]  # ties really were grouped


@pytest.mark.parametrize("far", [0.0, 1e-3, 1e-2, 0.1, 1.0, 1 / 1500])
@pytest.mark.parametrize("tie_decimals", [None, 1])
def test_tar_at_far_is_the_best_sklearn_roc_point_within_the_far(far, tie_decimals):
    rng = np.random.default_rng(2)
    scores, labels = _pairs(3000, rng, sep=2.0, tie_decimals=tie_decimals)
    s_fpr, s_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    # conservative: never interpolated, never above the target FAR (components.metrics.operating_point)
    assert tar_at_far(scores, labels, far) == pytest.approx(s_tpr[s_fpr <= far + 1e-12].max(), abs=1e-12)


def _eer_brute(scores, labels, steps=2001):
    """Walk every ROC segment densely and take the point where |fpr - (1 - tpr)| is smallest."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    best, best_gap = None, np.inf
    t = np.linspace(0, 1, steps)
    for i in range(len(fpr) - 1):
        f = fpr[i] + t * (fpr[i + 1] - fpr[i])
        r = tpr[i] + t * (tpr[i + 1] - tpr[i])
        gap = np.abs(f - (1 - r))
        j = int(np.argmin(gap))
        if gap[j] < best_gap:
            best, best_gap = f[j], gap[j]
    return best


@pytest.mark.parametrize("tie_decimals", [None, 0])
def test_eer_matches_brute_force(tie_decimals):
    rng = np.random.default_rng(3)
    scores, labels = _pairs(300, rng, tie_decimals=tie_decimals)
    assert eer(scores, labels) == pytest.approx(_eer_brute(scores, labels), abs=1e-3)


def test_eer_extremes():
    rng = np.random.default_rng(4)
    labels = np.repeat([1, 0], 500)
    separated = np.where(labels == 1, rng.uniform(0.6, 1.0, 1000), rng.uniform(-1.0, 0.5, 1000))
    assert eer(separated, labels) == 0.0
    assert tar_at_far(separated, labels, 0.0) == 1.0
    inverted = -separated
    assert eer(inverted, labels) == 1.0
    rand_scores, rand_labels = _pairs(40000, rng, sep=0.0)
    assert abs(eer(rand_scores, rand_labels) - 0.5) < 0.02


# ----------------------------------------------------------------------------- thresholds & 10-fold


def _best_threshold_brute(s, y):
    """Every candidate threshold (both ends + midpoints of distinct sorted scores), ascending; first max wins."""
    u = np.unique(s)
    cands = np.concatenate(([u[0] - max(1.0, abs(u[0]))], (u[:-1] + u[1:]) / 2, [u[-1] + max(1.0, abs(u[-1]))]))
    best_t, best_acc = None, -1.0
    for t in cands:
        acc = np.mean((s > t) == (y == 1))
        if acc > best_acc:
            best_t, best_acc = t, acc
    return best_t, best_acc


def _tenfold_brute(s, y, folds):
    accs, thrs = [], []
    for k in np.unique(folds):
        tr, te = folds != k, folds == k
        t, _ = _best_threshold_brute(s[tr], y[tr])
        thrs.append(t)
        accs.append(np.mean((s[te] > t) == (y[te] == 1)))
    return np.array(accs), np.array(thrs)


@pytest.mark.parametrize("tie_decimals", [None, 1])
def test_best_threshold_matches_brute_force(tie_decimals):
    rng = np.random.default_rng(5)
    scores, labels = _pairs(400, rng, tie_decimals=tie_decimals)
    thr, acc = best_threshold(scores, labels)
    b_thr, b_acc = _best_threshold_brute(scores, labels)
    assert acc == pytest.approx(b_acc)
    assert thr == pytest.approx(b_thr)
    assert np.mean((scores > thr) == (labels == 1)) == pytest.approx(acc)


@pytest.mark.parametrize("tie_decimals", [None, 1])
def test_tenfold_matches_brute_force(tie_decimals):
    rng = np.random.default_rng(6)
    scores, labels = _pairs(600, rng, tie_decimals=tie_decimals)
    folds = np.arange(600) % 10
    res = verification_10fold(scores, labels, folds)
    b_accs, b_thrs = _tenfold_brute(scores, labels, folds)
    np.testing.assert_allclose(res["fold_accuracies"], b_accs)
    np.testing.assert_allclose(res["thresholds"], b_thrs)
    assert res["accuracy"] == pytest.approx(b_accs.mean())
    assert res["std"] == pytest.approx(b_accs.std())
    assert set(res) == {"accuracy", "std", "thresholds", "fold_accuracies", "correct"}
    # each pair judged at its own fold's threshold, in the input's order
    for k, thr in enumerate(res["thresholds"]):
        test = folds == k
        np.testing.assert_array_equal(res["correct"][test], (scores[test] > thr) == (labels[test] == 1))


def test_tenfold_separable_and_random():
    rng = np.random.default_rng(7)
    labels = np.tile(np.repeat([1, 0], 300), 10)
    folds = np.repeat(np.arange(10), 600)
    separable = np.where(labels == 1, rng.uniform(0.5, 1.0, 6000), rng.uniform(-0.5, 0.4, 6000))
    res = verification_10fold(separable, labels, folds)
    assert res["accuracy"] == 1.0 and res["std"] == 0.0
    assert all(0.4 <= t <= 0.5 for t in res["thresholds"])
    rand_labels = rng.integers(0, 2, 20000)
    rand = verification_10fold(rng.normal(size=20000), rand_labels, np.arange(20000) % 10)
    assert abs(rand["accuracy"] - 0.5) < 0.03


def test_tenfold_threshold_never_sees_test_fold():
    # folds 1..9: genuine at 0.9, impostors at 0.1 -> their only split is 0.5.
    # fold 0: genuine at 0.35, impostors at 0.30 -> a threshold fitted on fold 0 (0.325) separates it.
    # Honest protocol: fold 0 is scored with 0.5 -> 50%; a leaky one (threshold on all pairs) gets 100%.
    labels = np.tile(np.repeat([1, 0], 10), 10)
    folds = np.repeat(np.arange(10), 20)
    scores = np.where(labels == 1, 0.9, 0.1)
    scores[folds == 0] = np.where(labels[folds == 0] == 1, 0.35, 0.30)
    res = verification_10fold(scores, labels, folds)
    assert res["thresholds"][0] == pytest.approx(0.5)
    assert res["fold_accuracies"][0] == 0.5
    assert res["fold_accuracies"][1:] == [1.0] * 9  # trained with fold 0 -> split 0.325 also fits folds 1..9
    assert res["accuracy"] == pytest.approx(0.95)
    leaky_thr, leaky_acc = best_threshold(scores, labels)
    assert leaky_acc == 1.0 and np.mean((scores[folds == 0] > leaky_thr) == (labels[folds == 0] == 1)) == 1.0


# ----------------------------------------------------------------------------- identification


def test_rank1_clustered_and_random():
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(50, 64))
    gallery = centers + 0.05 * rng.normal(size=centers.shape)
    probe_ids = np.repeat(np.arange(50), 4)
    probes = 3.0 * (centers[probe_ids] + 0.05 * rng.normal(size=(200, 64)))  # scale must not matter
    assert rank1(gallery, np.arange(50), probes, probe_ids) == 1.0
    ids = [f"id{i}" for i in range(10)]
    rand = rank1(rng.normal(size=(10, 32)), ids, rng.normal(size=(3000, 32)), rng.choice(ids, 3000))
    assert abs(rand - 0.1) < 0.03


# ----------------------------------------------------------------------------- evaluate_pairs


def _templates_and_pairs(rng, n_ids=40, per_id=6, d=32):
    ids = np.repeat(np.arange(n_ids), per_id)
    centers = rng.normal(size=(n_ids, d))
    templates = 5.0 * (centers[ids] + 0.9 * rng.normal(size=(ids.size, d)))
    a, b, label, fold = [], [], [], []
    for k in range(10):
        for _ in range(30):
            i = rng.integers(ids.size)
            j = rng.choice(np.flatnonzero((ids == ids[i]) & (np.arange(ids.size) != i)))
            a.append(i), b.append(j), label.append(1), fold.append(k)
            j = rng.choice(np.flatnonzero(ids != ids[i]))
            a.append(i), b.append(j), label.append(0), fold.append(k)
    return templates, {"a": np.array(a), "b": np.array(b), "label": np.array(label), "fold": np.array(fold)}


def test_evaluate_pairs_contract():
    rng = np.random.default_rng(9)
    templates, pairs = _templates_and_pairs(rng)
    res = evaluate_pairs(templates, pairs)
    assert set(res) == CONTRACT_KEYS
    assert all(type(v) is float for v in res.values())
    assert 0.6 < res["verification_accuracy"] <= 1.0 and 0.0 <= res["eer"] < 0.4
    # DataFrame input gives the same numbers; cosine scores reproduce the sub-metrics
    assert evaluate_pairs(templates, pd.DataFrame(pairs)) == res
    t = templates / np.linalg.norm(templates, axis=1, keepdims=True)
    scores = np.sum(t[pairs["a"]] * t[pairs["b"]], axis=1)
    assert res["verification_accuracy"] == pytest.approx(verification_10fold(scores, pairs["label"], pairs["fold"])["accuracy"])
    assert res["tar_at_far_1e-3"] == pytest.approx(tar_at_far(scores, pairs["label"], 1e-3))
    assert res["eer"] == pytest.approx(eer(scores, pairs["label"]))
    assert "tar_at_far_1e-2" in evaluate_pairs(templates, pairs, far=1e-2)


def test_far_key():
    assert far_key(1e-3) == "tar_at_far_1e-3"
    assert far_key(0.01) == "tar_at_far_1e-2"
    assert far_key(1e-4) == "tar_at_far_1e-4"
    assert far_key(0.015) == "tar_at_far_1.5e-2"


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
    s, y = np.array([0.1, 0.9, 0.5, 0.2]), np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="length mismatch: 4 scores but 3 labels"):
        roc(s, y[:3])
    with pytest.raises(ValueError, match=r"labels must be 1 \(genuine\) or 0 \(impostor\).*\[2\]"):
        eer(s, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="1 NaN"):
        tar_at_far(np.array([0.1, np.nan, 0.5, 0.2]), y)
    with pytest.raises(ValueError, match="both genuine .* and impostor"):
        roc(s, np.ones(4, int))
    with pytest.raises(ValueError, match="far must be in"):
        tar_at_far(s, y, far=2.0)
    scores = np.linspace(0, 1, 40)
    labels = np.tile([1, 0], 20)
    folds = np.arange(40) // 10
    labels_no_imp = labels.copy()
    labels_no_imp[folds == 2] = 1
    with pytest.raises(ValueError, match="fold 2 needs both genuine"):
        verification_10fold(scores, labels_no_imp, folds)
    with pytest.raises(ValueError, match="length mismatch"):
        verification_10fold(scores, labels, folds[:-1])
    with pytest.raises(ValueError, match="at least 2 folds"):
        verification_10fold(scores, labels, np.zeros(40, int))
    templates = np.random.default_rng(0).normal(size=(5, 8))
    good = {"a": np.array([0, 1]), "b": np.array([2, 3]), "label": np.array([1, 0]), "fold": np.array([0, 1])}
    with pytest.raises(ValueError, match="missing 'fold'"):
        evaluate_pairs(templates, {k: v for k, v in good.items() if k != "fold"})
    with pytest.raises(ValueError, match="indexes outside templates"):
        evaluate_pairs(templates, {**good, "b": np.array([2, 5])})
    with pytest.raises(ValueError, match="all-zero row"):
        evaluate_pairs(np.zeros((5, 8)), good)
    with pytest.raises(ValueError, match="absent from the gallery"):
        rank1(templates, [0, 1, 2, 3, 4], templates, [0, 1, 2, 3, 9])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        extract_features(lambda x: x.mean((2, 3)), np.zeros((2, 3, 8, 8), np.uint8))


# ----------------------------------------------------------------------------- feature extraction


def test_to_model_tensor():
    img = np.zeros((2, 4, 5, 3), np.uint8)
    img[0, 1, 2] = (0, 128, 255)
    t = to_model_tensor(img)
    assert t.dtype == torch.float32 and tuple(t.shape) == (2, 3, 4, 5)
    assert t[0, :, 1, 2].tolist() == pytest.approx([-1.0, 0.5 / 127.5, 1.0])
    assert t.min() >= -1 and t.max() <= 1


def test_extract_features_flip():
    rng = np.random.default_rng(10)
    imgs = rng.integers(0, 256, size=(37, 8, 6, 3), dtype=np.uint8)
    invariant = lambda x: x.mean(dim=(2, 3))  # noqa: E731 - mirror-invariant
    no_flip = extract_features(invariant, imgs, batch_size=10, flip=False)
    assert no_flip.dtype == np.float32 and no_flip.shape == (37, 3)
    np.testing.assert_allclose(extract_features(invariant, imgs, batch_size=10), 2 * no_flip, rtol=1e-6, atol=1e-6)
    # not mirror-invariant: image features + mirrored-image features; tensor and uint8 inputs agree
    left_column = lambda x: x[:, :, :, 0].flatten(1)  # noqa: E731
    x = to_model_tensor(imgs)
    expected = (x[:, :, :, 0] + x[:, :, :, -1]).flatten(1).numpy()
    np.testing.assert_allclose(extract_features(left_column, imgs, batch_size=16), expected, rtol=1e-6)
    np.testing.assert_allclose(extract_features(left_column, x, batch_size=100), expected, rtol=1e-6)


def test_extract_features_runs_in_inference_mode():
    seen = []
    extract_features(lambda x: seen.append(torch.is_inference_mode_enabled()) or x.mean((2, 3)),
                     np.zeros((3, 4, 4, 3), np.uint8), flip=False)
    assert seen == [True]


# ----------------------------------------------------------------------------- plots & bench store


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(11)
    s, y = _pairs(2000, rng, sep=2.0)
    p = roc_plot({"model": (s, y), "defended": (s + rng.normal(size=s.size), y)}, tmp_path / "sub" / "roc.png", title="t")
    h = score_histogram(s, y, tmp_path / "hist.png")
    for path in (p, h):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_record_merges_entries(tmp_path):
    path = tmp_path / "reports" / "bench.json"
    record("a", {"x": np.float64(1.5), "n": np.int64(3)}, path=path)
    record("b", {"y": 2}, path=path)
    record("a", {"x": 4.0}, path=path)
    assert json.loads(path.read_text()) == {"a": {"x": 4.0}, "b": {"y": 2}}
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []
