"""Attribute inference from stored templates: what do the templates a server keeps reveal
about sensitive attributes of the person (sex, skin tone, ...)? (DESIGN.md section 7,
metrics.json block ``attribute_inference``.)

The idea. Face templates are trained to encode identity only, yet they also encode
soft-biometric attributes (Terhörst et al., "On Soft-Biometric Information Stored in
Biometric Face Embeddings", IEEE T-BIOM 2021; Dhar et al., "How are attributes expressed
in face DCNNs?", FG 2020): a small classifier -- a probe -- trained on templates of people
whose attributes are known predicts the attribute of anyone else's template. Privacy
enhancing templates (PE-MIU, SensitiveNets, the variational privacy funnel of the dvpf
defense) are judged by how far they push such a probe back to chance. Leakage in bits
follows the variational bound used by the privacy funnel (Razeghi et al., "Deep
Variational Privacy Funnel", ICASSP 2024; Barber and Agakov 2003): for any probe q(s|z),
I(S; Z) >= H(S) - E[-log q(S|Z)], so H(S) minus the probe's held-out cross-entropy is a
lower bound on the information the templates carry about S.

Variant built here. Features: the stored template ``system(x)`` of every image,
flip-averaged and L2-normalised (the verification protocol), standardised. Probe: a
scikit-learn ``MLPClassifier`` (one hidden ReLU layer by default, Adam, L2 penalty
``alpha``, fixed seed) per attribute column. Data (``fit_on: public``, the default): the
probe learns from the PUBLIC identities only -- the attacker's own labelled people -- and
is scored on the TEST identities, people that no model and no defense's adversary ever
trained on (dvpf fits its adversaries on train and public identities; scoring those would
measure its adversaries' own training set). ``fit_on: cross_fit`` instead cross-fits over
all identities (``StratifiedGroupKFold``, identity as group, attribute as stratum): more
people per class, but the probe then learns from private identities, and the scored ones
include those a defense saw. Calibration: an overconfident probe has a held-out
cross-entropy above H(S) even when it predicts well, which would hide real leakage, so
by default each fold also fits a softmax temperature on an inner identity-disjoint
validation split of its own training identities and applies it to its held-out
predictions (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

Measures per attribute column (columns not declared by the manifest schema,
``components.data.schema.attribute_columns``): ``balanced_accuracy`` of the predictions
on the scored identities; ``chance``, the balanced accuracy of the majority-class predictor
(= 1/K for the K values present); ``leakage_bits`` = max(0, H(S) - CE) / ln 2, with H(S)
the entropy of the attribute's empirical distribution over the scored images and CE the
probe's mean cross-entropy on them, both in nats. Attributes that cannot be probed (a
single value among the scored identities, a value with fewer than two identities to learn
from) are left out (listed in the strength under ``skipped``); with no attribute column at
all the attack raises NotApplicable.

Threat model: the attacker (a curious server, or a thief of the template database) reads
stored templates and has a labelled set of templates from the same system -- faces of
public people whose attributes it knows, enrolled through the system like anyone else. It
needs no images of the victims and no model weights. ``ci95``: bootstrap over the scored
identities, the fitted probe held fixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal
import math
import os
import warnings

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.optimize import minimize_scalar
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.attacks.measures import frozen
from components.data.schema import attribute_columns
from components.defenses.base import ProtectedSystem
from components.metrics.advantage import rescaled
from components.metrics.embeddings import extract_features

__all__ = ["ATTACK", "DEFAULTS", "AttributeInference", "leakage_measures", "probe_attribute", "templates"]

@dataclass
class AttributeInferenceConfig:
    hidden: list[int] = field(default_factory=lambda: [64])   # MLP hidden layer sizes
    alpha: float = 1e-3   # L2 penalty of the MLP
    max_iter: int = 300   # Adam epochs (upper bound; sklearn stops early on a plateau)
    lr: float = 1e-3   # Adam learning rate
    folds: int = 5   # identity-disjoint outer folds (fewer if an attribute value has fewer identities)
    calibrate: bool = True   # fit a softmax temperature on an inner identity-disjoint split
    max_images_per_identity: int = 0   # 0 = all; else a seeded subset per identity (cost knob)
    flip: bool = True   # flip-average templates
    batch_size: int = 256
    n_jobs: int = 0   # worker processes for the folds (0 = one per CPU core); same result
    fit_on: Literal["public", "cross_fit"] = "public"   # public: learn from public identities only


FIT_ON = ("public", "cross_fit")
PUBLIC_SPLIT, SCORED_SPLIT = "public", "test"


DEFAULTS: dict = asdict(AttributeInferenceConfig())   # the plain dict the attack merges its params over

_P_FLOOR = 1e-6   # probabilities are floored here (then renormalised): cross-entropy stays finite


def templates(system: ProtectedSystem, images: np.ndarray, flip: bool = True, batch_size: int = 256,
              device="cpu") -> np.ndarray:
    """Stored templates of uint8 images: system(x), flip-averaged, L2-normalised (float64)."""
    t = extract_features(system, images, batch_size=batch_size, flip=flip, device=device).astype(np.float64)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def leakage_measures(y: np.ndarray, proba: np.ndarray) -> dict:
    """{"balanced_accuracy", "chance", "leakage_bits", "advantage"} of held-out class probabilities
    ``proba`` (N, K) for integer labels ``y`` in 0..K-1 (every class present in y)."""
    y = np.asarray(y, dtype=np.int64)
    k = proba.shape[1]
    counts = np.bincount(y, minlength=k)
    present = counts > 0
    freq = counts[present] / counts.sum()
    h = float(-(freq * np.log(freq)).sum())
    p = np.clip(proba, _P_FLOOR, None)
    p = p / p.sum(axis=1, keepdims=True)
    ce = float(-np.mean(np.log(p[np.arange(len(y)), y])))
    bacc, chance = float(balanced_accuracy_score(y, p.argmax(axis=1))), 1.0 / int(present.sum())
    return {"balanced_accuracy": bacc, "chance": chance, "leakage_bits": max(0.0, h - ce) / math.log(2.0),
            "advantage": rescaled(bacc, chance)}


def _fit(x, y, p: dict, seed: int):
    clf = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=tuple(int(h) for h in p["hidden"]), alpha=float(p["alpha"]),
        learning_rate_init=float(p["lr"]), max_iter=int(p["max_iter"]), random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _log_proba(clf, x, k: int) -> np.ndarray:
    """(N, k) floored log-probabilities over all k classes (classes unseen in training get the floor)."""
    p = np.full((len(x), k), _P_FLOOR)
    classes = clf.classes_
    p[:, classes] = np.maximum(clf.predict_proba(x), _P_FLOOR)
    p /= p.sum(axis=1, keepdims=True)
    return np.log(p)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _fit_temperature(logp: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the cross-entropy of softmax(logp / T) on (logp, y)."""
    def ce(log_t):
        q = np.clip(_softmax(logp / math.exp(log_t)), _P_FLOOR, None)
        return float(-np.mean(np.log(q[np.arange(len(y)), y])))
    res = minimize_scalar(ce, bounds=(math.log(0.05), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def _n_folds(groups_per_class: np.ndarray, wanted: int) -> int:
    return int(max(2, min(wanted, groups_per_class.min())))


def _fold(z: np.ndarray, y: np.ndarray, groups: np.ndarray, tr: np.ndarray, te: np.ndarray, k: int,
          p: dict, seed: int, i: int) -> tuple[np.ndarray, float, int]:
    """One outer fold: (held-out probabilities of rows `te`, temperature, train identities).
    Top level and self-contained, so that folds can run in separate worker processes."""
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # one BLAS thread: tiny matrices, and oversubscribed BLAS threads on a busy CPU make
        # sklearn's MLP 10-100x slower
        warnings.simplefilter("ignore", UserWarning)   # "least populated class" notices of small strata
        t = 1.0
        if p["calibrate"]:
            inner_groups = groups[tr]
            inner_gpc = np.bincount(pd.Series(y[tr]).groupby(inner_groups).first().to_numpy(), minlength=k)
            if (inner_gpc[inner_gpc > 0] >= 2).all():
                inner = StratifiedGroupKFold(n_splits=_n_folds(inner_gpc[inner_gpc > 0], 4),
                                             shuffle=True, random_state=seed + 1000 + i)
                itr, iva = next(inner.split(z[tr], y[tr], inner_groups))
                clf = _fit(z[tr][itr], y[tr][itr], p, seed)
                t = _fit_temperature(_log_proba(clf, z[tr][iva], k), y[tr][iva])
        clf = _fit(z[tr], y[tr], p, seed)
        return _softmax(_log_proba(clf, z[te], k) / t), t, len(np.unique(groups[tr]))


def probe_attribute(z: np.ndarray, labels, groups: np.ndarray, p: dict, seed: int = 0,
                    train: np.ndarray | None = None) -> tuple[dict, dict]:
    """Probe of one attribute. Returns (measures, details).

    z: (N, D) templates; labels: (N,) attribute values; groups: (N,) identity of each row.
    With `train` (a boolean mask), one probe learns from those rows and is scored on the
    others; without, identity-disjoint cross-fitting scores every row by a probe that never
    saw its identity. The folds are independent seeded fits: with `n_jobs` > 1 they run in
    that many worker processes (joblib), with the same result as one after the other.
    details["rows"] are the scored rows, details["y"] / ["pred"] their labels and predictions."""
    p = {**DEFAULTS, **p}
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    k = len(classes)
    id_class = pd.Series(y).groupby(np.asarray(groups)).first()
    groups_per_class = np.bincount(id_class.to_numpy(), minlength=k)
    if train is not None:
        train = np.asarray(train, dtype=bool)
        splits = [(np.flatnonzero(train), np.flatnonzero(~train))]
    else:
        outer = StratifiedGroupKFold(n_splits=_n_folds(groups_per_class, int(p["folds"])), shuffle=True,
                                     random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            splits = list(outer.split(z, y, groups))
    n_jobs = int(p["n_jobs"]) or (os.cpu_count() or 1)
    n_jobs = max(1, min(n_jobs, len(splits)))
    results = Parallel(n_jobs=n_jobs)(delayed(_fold)(z, y, groups, tr, te, k, p, seed, i)
                                      for i, (tr, te) in enumerate(splits))
    proba = np.zeros((len(y), k))
    for (_, te), (fold_proba, _, _) in zip(splits, results):
        proba[te] = fold_proba
    rows = np.sort(np.concatenate([te for _, te in splits]))
    temps = [t for _, t, _ in results]
    n_train = [n for _, _, n in results]
    measures = leakage_measures(y[rows], proba[rows])
    details = {"folds": len(splits), "train_identities_per_fold": float(np.mean(n_train)),
               "rows": rows, "y": y[rows], "pred": proba[rows].argmax(axis=1),   # for the bootstrap
               "temperatures": [round(v, 4) for v in temps], "classes": [str(c) for c in classes],
               "identities_per_class": {str(c): int(n) for c, n in zip(classes, groups_per_class)}}
    return measures, details


def _why_not_probeable(part: pd.DataFrame, column: str, train: np.ndarray | None) -> str | None:
    """Why an attribute column cannot be probed (None: it can): cross-fitted, each value
    needs two identities; fitted on public identities, the scored identities need two
    values and each of their values two public identities to learn from."""
    if train is None:
        counts = part.groupby("identity")[column].first().value_counts()
        if len(counts) < 2:
            return "a single value"
        if counts.min() < 2:
            return f"value {counts.idxmin()!r} has fewer than two identities"
        return None
    learn = part[train].groupby("identity")[column].first().value_counts()
    scored = part[~train].groupby("identity")[column].first().value_counts()
    if len(scored) < 2:
        return "a single value among the scored (test) identities"
    thin = [v for v in scored.index if learn.get(v, 0) < 2]
    if thin:
        return f"value {thin[0]!r} has fewer than two public identities to learn from"
    return None


class AttributeInference:
    config_class = AttributeInferenceConfig   # its params block (params.yaml's schema reads it)
    name = "attribute_inference"

    def applies_to(self, system: ProtectedSystem) -> str | None:
        return None   # every system stores templates; whether the data has attributes is decided in run

    def run(self, ctx: AttackContext) -> AttackResult:
        p = {**DEFAULTS, **(ctx.params or {})}
        unknown = set(p) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"attribute_inference: unknown params {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        m = ctx.manifest
        attrs = attribute_columns(m)
        if not attrs:
            raise NotApplicable("no sensitive attribute columns in the dataset")
        if p["fit_on"] not in FIT_ON:
            raise ValueError(f"attribute_inference: fit_on must be one of {FIT_ON}, got {p['fit_on']!r}")
        public = p["fit_on"] == "public"
        part = m.sort_values("index")
        if public:   # learn from the attacker's own people, score people no model or adversary saw
            if "split" not in m.columns:
                raise NotApplicable("the manifest has no split column: public and scored identities are undefined")
            part = part[part["split"].isin([PUBLIC_SPLIT, SCORED_SPLIT])]
        cap = int(p["max_images_per_identity"])
        if cap > 0:   # a seeded subset of each identity's images
            rng = np.random.default_rng(ctx.seed)
            keep = [idx if len(idx) <= cap else rng.choice(idx, cap, replace=False)
                    for idx in part.groupby("identity", sort=True)["index"].agg(np.asarray)]
            part = part[part["index"].isin(np.concatenate(keep))]
        groups = part["identity"].to_numpy()
        train = (part["split"] == PUBLIC_SPLIT).to_numpy() if public else None

        probeable, skipped = [], {}
        for a in attrs:
            reason = _why_not_probeable(part, a, train)
            if reason:
                skipped[a] = reason
            else:
                probeable.append(a)
        if not probeable:
            raise NotApplicable("no attribute column can be probed (" +
                                "; ".join(f"{a}: {why}" for a, why in skipped.items()) + ")")

        with frozen(ctx.system) as system:
            params_ = list(system.parameters()) + list(system.buffers())
            device = params_[0].device if params_ else ctx.device
            z = templates(system, ctx.images[part["index"].to_numpy()], flip=bool(p["flip"]),
                          batch_size=int(p["batch_size"]), device=device)

        measures, details = {}, {}
        for a in probeable:
            measures[a], details[a] = probe_attribute(z, part[a].astype(str).to_numpy(), groups, p, seed=ctx.seed,
                                                      train=train)
        measures["advantage"] = max(measures[a]["advantage"] for a in probeable)   # the most leaked attribute
        replicates = {}
        if ctx.bootstrap is not None:   # scored rows weighted by their identity; the probe stays as fitted
            for a in probeable:
                d, ids = details[a], groups[details[a]["rows"]]
                with warnings.catch_warnings():   # a replicate may weigh a class to 0
                    warnings.simplefilter("ignore", UserWarning)
                    bacc = ctx.bootstrap.statistic(
                        lambda w, y=d["y"], pred=d["pred"]: balanced_accuracy_score(y, pred, sample_weight=w), ids)
                # chance of each replicate: 1 / the classes it weighs (balanced accuracy leaves the others out)
                present = (ctx.bootstrap.weights(ids) @ np.eye(int(d["y"].max()) + 1)[d["y"]] > 0).sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    chance = 1.0 / present
                    adv = np.where(present > 1, np.clip((bacc - chance) / (1.0 - chance), 0.0, 1.0), np.nan)
                replicates[f"{a}.balanced_accuracy"] = bacc
                replicates[f"{a}.advantage"] = adv
            replicates["advantage"] = np.max([replicates[f"{a}.advantage"] for a in probeable], axis=0)
        scored = groups if train is None else groups[~train]
        hidden = "-".join(str(int(h)) for h in p["hidden"])
        strength = {
            "probe": f"MLP({hidden})",
            "features": "stored templates, flip-averaged, L2-normalised, standardised",
            "split": ("fitted on the public identities, scored on the test identities (seen by no model and no "
                      "defense's adversary)" if public else
                      "identity-disjoint StratifiedGroupKFold over all identities, out-of-fold predictions pooled"),
            "identities": int(len(np.unique(groups))),
            "images": int(len(groups)),
            "train_identities": {a: details[a]["train_identities_per_fold"] for a in probeable},
            "test_identities": int(len(np.unique(scored))),   # each scored by a probe that never saw it
            "folds": {a: details[a]["folds"] for a in probeable},
            "max_iter": int(p["max_iter"]),
            "alpha": float(p["alpha"]),
            "lr": float(p["lr"]),
            "calibrate": bool(p["calibrate"]),
            "temperatures": {a: details[a]["temperatures"] for a in probeable},
            "identities_per_class": {a: details[a]["identities_per_class"] for a in probeable},
            "skipped": skipped,
            "seed": int(ctx.seed),
        }
        return AttackResult(measures=measures, strength=strength, artifacts={}, replicates=replicates)


ATTACK = AttributeInference()
