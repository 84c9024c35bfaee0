"""Reading a score distribution at a low false-match rate, in one convention for the whole
project: verification's TAR@FAR, the SAR threshold of the reconstruction attacks and the
membership attack's TPR at FPR all use it.

The convention (conservative, as in LiRA's and insightface's low-FPR tables): with n
negative scores, the threshold t is the (floor(rate * n) + 1)-th largest negative and a
score is accepted when it is strictly above t, so at most floor(rate * n) negatives pass:
the measured false rate never exceeds the target. The positive rate is read at that t,
never interpolated between ROC points. When rate * n < 1 the threshold is the highest
negative (false rate 0), which is why every figure carries the number of negatives behind it.

Thresholds for verification are read from every cross-identity pair of the test identities
(tens of thousands of impostor scores on the demo rather than the ~1,500 impostor pairs of
the 10-fold protocol), streamed in row blocks so memory stays O(block x N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["threshold_at_rate", "rate_above", "positive_rate_at", "PairScores", "all_pairs_operating_point"]


def _rank(rate: float, n: int) -> int:
    """How many negatives may pass at `rate` (floor, never above the target)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if n < 1:
        raise ValueError("no negative scores given")
    return int(np.floor(rate * n + 1e-9))


def threshold_at_rate(negatives: np.ndarray, rate: float) -> float:
    """The threshold t with at most floor(rate * n) negatives strictly above it."""
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    k = _rank(rate, neg.size)
    return float(np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k])


def rate_above(scores: np.ndarray, threshold: float) -> float:
    """Share of scores strictly above the threshold (the accept rule everywhere)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("no scores given")
    return float(np.mean(s > threshold))


def positive_rate_at(positives: np.ndarray, negatives: np.ndarray, rate: float) -> tuple[float, float, int]:
    """(positive rate, threshold, number of negatives) at false rate `rate`: TAR at FAR for
    genuine/impostor scores, TPR at FPR for members/non-members."""
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    t = threshold_at_rate(neg, rate)
    return rate_above(positives, t), t, int(neg.size)


@dataclass
class PairScores:
    """Every unordered pair of a set of templates, split by identity, without storing the
    pairs: the `top` largest impostor scores (enough for any rate <= top / n_impostor, with
    room for the bootstrap's reweighting) and all genuine scores (few: sum of n_i^2 / 2),
    each with the identities behind it."""

    genuine: np.ndarray
    top_impostors: np.ndarray     # descending
    n_impostor: int
    genuine_ids: np.ndarray | None = None
    top_ids: np.ndarray | None = None          # (len(top_impostors), 2): the identities of each impostor pair
    identity_counts: tuple[np.ndarray, np.ndarray] | None = None   # (identities, images of each)

    def threshold(self, rate: float) -> float:
        k = _rank(rate, self.n_impostor)
        if k >= self.top_impostors.size:
            raise ValueError(f"rate {rate} needs the {k + 1} largest impostor scores; {self.top_impostors.size} kept")
        return float(self.top_impostors[k])

    def tar(self, rate: float) -> float:
        return rate_above(self.genuine, self.threshold(rate))

    def tar_replicates(self, rate: float, boot) -> np.ndarray:
        """(B,) TAR at `rate` under each replicate of `boot` (components.metrics.intervals):
        impostor pair (a, b) weighs w(a) w(b), the threshold is re-read from the weighted
        impostors (at most rate x their total weight strictly above it), a genuine pair
        weighs w(its identity). NaN where the kept impostors do not reach the rate."""
        if self.genuine_ids is None or self.top_ids is None or self.identity_counts is None:
            raise ValueError("these pair scores were built without identities")
        ids, counts = self.identity_counts
        w = boot.weights(ids) * counts[None, :]                              # (B, K) weighted images
        total = (w.sum(axis=1) ** 2 - (w ** 2).sum(axis=1)) / 2.0            # weighted impostor pairs
        pw = boot.weights(self.top_ids[:, 0]) * boot.weights(self.top_ids[:, 1])   # (B, M)
        cum = np.cumsum(pw, axis=1)
        over = cum > (rate * total)[:, None] + 1e-9
        reached = over.any(axis=1)
        t = self.top_impostors[np.argmax(over, axis=1)]
        gw = boot.weights(self.genuine_ids)
        gsum = gw.sum(axis=1)
        accepted = (gw * (self.genuine[None, :] > t[:, None])).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = accepted / gsum
        return np.where(reached & (gsum > 0), out, np.nan)


def all_pairs_operating_point(templates: np.ndarray, identities: np.ndarray, probe_templates: np.ndarray | None = None,
                              max_rate: float = 1e-2, block: int = 512) -> PairScores:
    """Scores of all pairs (a < b) of `templates` (cosine of L2-normalised rows; with
    `probe_templates`, stored a against probe b), genuine when the identities match. Row
    blocks keep memory at block x N; only the top share of impostors is kept: 4 x max_rate
    (the bootstrap's replicates reweight them) plus 64."""
    t = _unit(templates)
    p = t if probe_templates is None else _unit(probe_templates)
    ids = np.asarray(identities)
    n = t.shape[0]
    if p.shape != t.shape or ids.shape[0] != n:
        raise ValueError(f"templates {t.shape}, probe templates {p.shape} and {ids.shape[0]} identities disagree")
    same = ids[:, None] == ids[None, :]
    n_impostor = int((~same).sum() // 2)
    if n_impostor == 0:
        raise ValueError("all templates share one identity: no impostor pairs")
    keep = 4 * (_rank(max_rate, n_impostor) + 1) + 64
    genuine, genuine_ids = [], []
    top, top_ids = np.empty(0), np.empty((0, 2), dtype=ids.dtype)
    for start in range(0, n, block):
        stop = min(n, start + block)
        scores = t[start:stop] @ p.T                                    # (block, n)
        upper = np.arange(n)[None, :] > np.arange(start, stop)[:, None]  # a < b only
        g = same[start:stop] & upper
        genuine.append(scores[g])
        genuine_ids.append(np.broadcast_to(ids[start:stop, None], g.shape)[g])
        r, c = np.nonzero(~same[start:stop] & upper)
        if r.size:
            merged = np.concatenate([top, scores[r, c]])
            merged_ids = np.concatenate([top_ids, np.stack([ids[start + r], ids[c]], axis=1)])
            m = min(keep, merged.size)
            sel = np.argpartition(merged, merged.size - m)[merged.size - m:]
            top, top_ids = merged[sel], merged_ids[sel]
    order = np.argsort(-top, kind="stable")
    uniq, counts = np.unique(ids, return_counts=True)
    return PairScores(np.concatenate(genuine).astype(np.float64), top[order].astype(np.float64), n_impostor,
                      genuine_ids=np.concatenate(genuine_ids), top_ids=top_ids[order],
                      identity_counts=(uniq, counts.astype(np.float64)))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
