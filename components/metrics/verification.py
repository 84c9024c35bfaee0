"""Face-verification measures: ROC, TAR@FAR, EER and insightface's LFW-style 10-fold protocol.

insightface (`recognition/arcface_torch/eval/verification.py`) picks each fold's threshold by looping
over a fixed grid of distances on the other nine folds; here every measure is exact and vectorised
(sort once + cumulative sums), so evaluation is cheap enough to run on every pipeline step.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from components.metrics.operating_point import positive_rate_at

__all__ = [
    "roc",
    "tar_at_far",
    "eer",
    "best_threshold",
    "verification_10fold",
    "rank1",
    "evaluate_pairs",
    "far_key",
]


# --------------------------------------------------------------------------- input checks


def _check_scores_labels(scores, labels, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Return (float64 scores, bool labels) after validating shape, length, finiteness and 0/1 labels."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {s.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"length mismatch: {s.shape[0]} {what} but {y.shape[0]} labels")
    if s.shape[0] == 0:
        raise ValueError(f"no {what} given (empty array)")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise ValueError(f"{what} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    bad = ~np.isfinite(s)
    if bad.any():
        n_nan = int(np.isnan(s).sum())
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} must be finite: {n_nan} NaN and {int(bad.sum()) - n_nan} infinite value(s), "
            f"first at index {first}"
        )
    if y.dtype != bool:
        try:
            ok = np.isin(y, (0, 1))
        except TypeError:  # pragma: no cover - exotic dtypes
            ok = np.zeros(y.shape, dtype=bool)
        if not ok.all():
            bad_vals = np.unique(y[~ok])[:5]
            raise ValueError(
                "labels must be 1 (genuine) or 0 (impostor); found other values "
                f"{bad_vals.tolist()} ({int((~ok).sum())} of {y.shape[0]})"
            )
        y = y.astype(bool)
    return s, y


def _require_both_classes(y: np.ndarray, context: str) -> None:
    n_gen = int(y.sum())
    if n_gen == 0 or n_gen == y.shape[0]:
        raise ValueError(
            f"{context} needs both genuine (1) and impostor (0) pairs, "
            f"got {n_gen} genuine and {y.shape[0] - n_gen} impostor"
        )


# --------------------------------------------------------------------------- ROC family


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fpr, tpr, thresholds for similarity scores (higher = same identity), labels 1 genuine / 0 impostor.

    One point per distinct score (descending), preceded by (0, 0) at threshold +inf, exactly like
    ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``; point i counts pairs with
    ``score >= thresholds[i]`` as accepted. O(n log n): one sort plus cumulative sums.
    """
    s, y = _check_scores_labels(scores, labels)
    _require_both_classes(y, "roc")
    order = np.argsort(s, kind="stable")[::-1]
    s = s[order]
    y = y[order]
    # last index of each run of equal scores
    last = np.flatnonzero(np.diff(s))
    last = np.append(last, s.shape[0] - 1)
    tps = np.cumsum(y, dtype=np.float64)[last]
    fps = (last + 1) - tps
    tps = np.concatenate(([0.0], tps))
    fps = np.concatenate(([0.0], fps))
    thresholds = np.concatenate(([np.inf], s[last]))
    return fps / fps[-1], tps / tps[-1], thresholds


def far_key(far: float) -> str:
    """Contract key for a TAR measure: 1e-3 -> "tar_at_far_1e-3", 0.015 -> "tar_at_far_1.5e-2"."""
    mantissa, exponent = f"{float(far):e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"tar_at_far_{mantissa}e{int(exponent)}"


def _check_far(far: float) -> float:
    far = float(far)
    if not (0.0 <= far <= 1.0):
        raise ValueError(f"far must be in [0, 1], got {far}")
    return far


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float = 1e-3) -> float:
    """True-accept rate at the given false-accept rate, in the project's one convention
    (components.metrics.operating_point: at most floor(far * n) impostors accepted, no
    interpolation between ROC points)."""
    far = _check_far(far)
    s, y = _check_scores_labels(scores, labels)
    _require_both_classes(y, "tar_at_far")
    if far >= 1.0:
        return 1.0
    return positive_rate_at(s[y], s[~y], far)[0]


def _eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    d = fpr - (1.0 - tpr)  # non-decreasing, d[0] = -1 at (0, 0), d[-1] = +1 at (1, 1)
    i = int(np.argmax(d >= 0.0))
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate: the FAR (= FRR) where the ROC crosses fpr = 1 - tpr, linearly interpolated."""
    fpr, tpr, _ = roc(scores, labels)
    return _eer_from_roc(fpr, tpr)


# --------------------------------------------------------------------------- thresholds & 10-fold


def _best_threshold_sorted(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Best-accuracy threshold for ascending-sorted scores ``s`` with bool labels ``y``.

    Split i accepts s[i:] as genuine. Only splits between distinct scores (plus both ends) are
    candidates; ties in accuracy go to the lowest threshold.
    """
    n = s.shape[0]
    gen_below = np.concatenate(([0], np.cumsum(y, dtype=np.int64)))  # genuine among s[:i]
    imp_below = np.arange(n + 1) - gen_below
    correct = imp_below + (gen_below[-1] - gen_below)
    if n > 1:
        correct[1:n][s[1:] == s[:-1]] = -1  # no split inside a run of equal scores
    i = int(np.argmax(correct))
    if i == 0:
        thr = s[0] - max(1.0, abs(s[0]))
    elif i == n:
        thr = s[-1] + max(1.0, abs(s[-1]))
    else:
        lo, hi = s[i - 1], s[i]
        thr = 0.5 * lo + 0.5 * hi
        if not (lo <= thr < hi):  # adjacent floats: the midpoint rounded up onto hi
            thr = lo
    return float(thr), float(correct[i] / n)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``score > threshold`` -> genuine.

    Exact optimum over all distinct splits in O(n log n); the threshold is midway between the two
    neighbouring sorted scores (one unit, or |score|, beyond the extremes when all pairs go one way).
    """
    s, y = _check_scores_labels(scores, labels)
    order = np.argsort(s, kind="stable")
    return _best_threshold_sorted(s[order], y[order])


def verification_10fold(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict:
    """insightface protocol: for each fold k, the threshold is chosen on the other folds (best accuracy),
    accuracy measured on fold k.

    Returns {"accuracy": mean, "std": std over folds (population, as np.std), "thresholds": list,
    "fold_accuracies": list, "correct": bool array in the input's order}, lists in ascending
    fold-id order. Works for any number (>= 2) of folds.
    """
    s, y = _check_scores_labels(scores, labels)
    f = np.asarray(folds)
    if f.ndim != 1 or f.shape[0] != s.shape[0]:
        raise ValueError(f"length mismatch: {s.shape[0]} scores but folds has shape {f.shape}")
    fold_ids = np.unique(f)
    if fold_ids.shape[0] < 2:
        raise ValueError(f"need at least 2 folds, got {fold_ids.shape[0]} ({fold_ids.tolist()})")
    for k in fold_ids:
        _require_both_classes(y[f == k], f"fold {k}")

    order = np.argsort(s, kind="stable")  # sort once; every train subset stays sorted
    s, y, f = s[order], y[order], f[order]
    thresholds: list[float] = []
    accuracies: list[float] = []
    for k in fold_ids:  # loop over folds only; each fold is O(n)
        test = f == k
        train = ~test
        thr, _ = _best_threshold_sorted(s[train], y[train])
        acc = float(np.mean((s[test] > thr) == y[test]))
        thresholds.append(thr)
        accuracies.append(acc)
    acc_arr = np.asarray(accuracies)
    correct = np.empty(s.shape[0], dtype=bool)   # each pair judged at its own fold's threshold
    for k, thr in zip(fold_ids, thresholds):
        test = f == k
        correct[order[test]] = (s[test] > thr) == y[test]
    return {
        "accuracy": float(acc_arr.mean()),
        "std": float(acc_arr.std()),
        "thresholds": thresholds,
        "fold_accuracies": accuracies,
        "correct": correct,
    }


# --------------------------------------------------------------------------- identification


def _l2_normalise(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{what} has {zero.size} all-zero row(s) (first at row {int(zero[0])}); cannot normalise")
    return x / norms


def rank1(gallery: np.ndarray, gallery_ids, probes: np.ndarray, probe_ids) -> float:
    """Closed-set rank-1 identification rate with cosine similarity.

    Each probe is matched to its most similar gallery template; a hit when that template's id equals
    the probe's. Every probe identity must appear in the gallery.
    """
    return float(rank1_hits(gallery, gallery_ids, probes, probe_ids).mean())


def rank1_hits(gallery: np.ndarray, gallery_ids, probes: np.ndarray, probe_ids) -> np.ndarray:
    """Per probe: is its nearest gallery template (cosine) of its identity (`rank1`)."""
    g = _l2_normalise(gallery, "gallery")
    p = _l2_normalise(probes, "probes")
    gid = np.asarray(gallery_ids)
    pid = np.asarray(probe_ids)
    if gid.shape != (g.shape[0],):
        raise ValueError(f"length mismatch: {g.shape[0]} gallery templates but gallery_ids shape {gid.shape}")
    if pid.shape != (p.shape[0],):
        raise ValueError(f"length mismatch: {p.shape[0]} probes but probe_ids shape {pid.shape}")
    if g.shape[1] != p.shape[1]:
        raise ValueError(f"dimension mismatch: gallery D={g.shape[1]}, probes D={p.shape[1]}")
    missing = ~np.isin(pid, gid)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} probe(s) have identities absent from the gallery "
            f"(e.g. {np.unique(pid[missing])[:5].tolist()}); closed-set rank-1 needs every probe id in the gallery"
        )
    chunk = max(1, int(2**24 // max(1, g.shape[0])))  # bound the (chunk, G) similarity block
    hits = np.empty(p.shape[0], dtype=bool)
    for start in range(0, p.shape[0], chunk):
        sims = p[start : start + chunk] @ g.T
        hits[start : start + chunk] = gid[np.argmax(sims, axis=1)] == pid[start : start + chunk]
    return hits


# --------------------------------------------------------------------------- pairs -> report


def _pair_column(pairs: Any, name: str) -> np.ndarray:
    try:
        col = pairs[name]
    except (KeyError, IndexError, TypeError):
        cols = list(pairs.keys()) if hasattr(pairs, "keys") else type(pairs).__name__
        raise ValueError(f"pairs must have columns a, b, label, fold; missing {name!r} (got {cols})") from None
    return np.asarray(col)


def evaluate_pairs(templates: np.ndarray, pairs: Mapping | Any, far: float = 1e-3,
                   probe_templates: np.ndarray | None = None) -> dict:
    """Verification report for templates (N, D) (any scale; L2-normalised here) and pairs with int
    columns a, b, label, fold (a pandas DataFrame or a dict of arrays). Cosine similarity per pair;
    with `probe_templates` (same shape), pair (a, b) scores templates[a] against probe_templates[b].

    Returns {"verification_accuracy", "verification_std" (10-fold protocol), far_key(far) (e.g.
    "tar_at_far_1e-3"), "eer", "threshold"} as python floats; "threshold" is the best-accuracy
    cosine threshold over all pairs (the operating point one would deploy).
    """
    far = _check_far(far)
    t = _l2_normalise(templates, "templates")
    a, b, label, fold = (_pair_column(pairs, c) for c in ("a", "b", "label", "fold"))
    n = a.shape[0]
    for name, col in (("a", a), ("b", b), ("label", label), ("fold", fold)):
        if col.ndim != 1 or col.shape[0] != n:
            raise ValueError(f"length mismatch: pairs column {name!r} has shape {col.shape}, column 'a' has {n} rows")
    for name, idx in (("a", a), ("b", b)):
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"pairs column {name!r} must hold integer template indices, got dtype {idx.dtype}")
        if n and (idx.min() < 0 or idx.max() >= t.shape[0]):
            raise ValueError(
                f"pairs column {name!r} indexes outside templates: range [{idx.min()}, {idx.max()}] "
                f"but there are {t.shape[0]} templates"
            )
    tb = t if probe_templates is None else _l2_normalise(probe_templates, "probe_templates")
    if tb.shape != t.shape:
        raise ValueError(f"probe_templates {tb.shape} must match templates {t.shape}")
    scores = np.einsum("ij,ij->i", t[a], tb[b])   # stored a against probe b
    ver = verification_10fold(scores, label, fold)
    fpr, tpr, _ = roc(scores, label)
    thr, _ = best_threshold(scores, label)
    return {
        "verification_accuracy": float(ver["accuracy"]),
        "verification_std": float(ver["std"]),
        far_key(far): tar_at_far(scores, label, far),
        "eer": _eer_from_roc(fpr, tpr),
        "threshold": float(thr),
    }
