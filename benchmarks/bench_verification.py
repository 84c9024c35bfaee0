"""Benchmark: our exact, vectorised 10-fold verification vs insightface's protocol code
(`calculate_roc` / `calculate_accuracy` in recognition/arcface_torch/eval/verification.py: squared
euclidean distances, 400 grid thresholds np.arange(0, 4, 0.01), a Python loop per fold and threshold).
Checks both give the same LFW-style accuracy and records the speed-up in reports/bench.json.

    python -m benchmarks.bench_verification [--pairs 6000] [--repeat 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import timeit

import numpy as np

from benchmarks.report import record
from components.metrics.verification import verification_10fold

N_FOLDS = 10
ACC_TOLERANCE = 0.005
SPEEDUP_GOAL = 20.0


def make_pairs(n_pairs: int = 6000, n_folds: int = N_FOLDS, seed: int = 0):
    """LFW-like layout: contiguous folds, each half genuine / half impostor. Cosine scores drawn from two
    overlapping distributions (roughly a mid-quality face model: ~96% 10-fold accuracy)."""
    if n_pairs % (2 * n_folds):
        raise ValueError(f"--pairs must be a multiple of {2 * n_folds}, got {n_pairs}")
    rng = np.random.default_rng(seed)
    per_fold = n_pairs // n_folds
    labels = np.tile(np.repeat([1, 0], per_fold // 2), n_folds)
    folds = np.repeat(np.arange(n_folds), per_fold)
    genuine = rng.normal(0.42, 0.13, n_pairs)
    impostor = rng.normal(0.05, 0.09, n_pairs)
    scores = np.clip(np.where(labels == 1, genuine, impostor), -1.0, 1.0)
    return scores, labels, folds


# ----------------------------------------------------------------------------- reference (insightface style)


def _calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def reference_10fold(dist, actual_issame, folds, thresholds=None):
    """insightface's threshold selection: for each fold, the best of 400 grid thresholds on the other folds."""
    if thresholds is None:
        thresholds = np.arange(0, 4, 0.01)
    fold_ids = np.unique(folds)
    accuracy = np.zeros(len(fold_ids))
    for fold_idx, k in enumerate(fold_ids):
        train_set = np.flatnonzero(folds != k)
        test_set = np.flatnonzero(folds == k)
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = _calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        _, _, accuracy[fold_idx] = _calculate_accuracy(
            thresholds[best_threshold_index], dist[test_set], actual_issame[test_set]
        )
    return float(np.mean(accuracy)), float(np.std(accuracy))


# ----------------------------------------------------------------------------- main


def _best_time(fn, repeat: int, min_total: float = 0.2) -> float:
    """Best-of-`repeat` seconds per call; tiny functions are looped so each sample lasts ~min_total."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * min_total / max(elapsed, 1e-9))) if elapsed < min_total else number
    return min(timer.repeat(repeat=repeat, number=number)) / number


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--repeat", type=int, default=5, help="timing samples; the best is kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default="reports/bench.json")
    args = ap.parse_args(argv)

    scores, labels, folds = make_pairs(args.pairs, N_FOLDS, args.seed)
    # unit embeddings: ||e1 - e2||^2 = 2 - 2 cos, the distance insightface thresholds
    dist = 2.0 - 2.0 * scores
    issame = labels.astype(bool)

    ours = verification_10fold(scores, labels, folds)
    ref_acc, ref_std = reference_10fold(dist, issame, folds)
    t_ours = _best_time(lambda: verification_10fold(scores, labels, folds), args.repeat)
    t_ref = _best_time(lambda: reference_10fold(dist, issame, folds), max(1, min(args.repeat, 3)), min_total=0.0)
    speedup = t_ref / t_ours
    diff = ours["accuracy"] - ref_acc

    print(f"verification protocol: {args.pairs} pairs, {N_FOLDS} folds, seed {args.seed}")
    print(f"{'':<28}{'time (ms)':>12}{'accuracy':>12}{'std':>10}")
    print(f"{'ours (exact, vectorised)':<28}{t_ours * 1e3:>12.3f}{ours['accuracy']:>12.4f}{ours['std']:>10.4f}")
    print(f"{'reference (400-grid loop)':<28}{t_ref * 1e3:>12.3f}{ref_acc:>12.4f}{ref_std:>10.4f}")
    print(f"speed-up: {speedup:.1f}x (goal >= {SPEEDUP_GOAL:.0f}x)   accuracy diff: {diff:+.4f} (tolerance {ACC_TOLERANCE})")

    record(
        "verification_protocol",
        {
            "ours_s": t_ours,
            "reference_s": t_ref,
            "speedup": speedup,
            "accuracy_ours": ours["accuracy"],
            "accuracy_reference": ref_acc,
            "pairs": args.pairs,
        },
        path=args.report,
    )
    print(f"recorded 'verification_protocol' in {args.report}")

    ok = abs(diff) <= ACC_TOLERANCE
    if not ok:
        print(f"FAIL: accuracies disagree by {diff:+.4f} > {ACC_TOLERANCE}", file=sys.stderr)
    if speedup < SPEEDUP_GOAL:
        print(f"note: speed-up {speedup:.1f}x is below the {SPEEDUP_GOAL:.0f}x goal", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
