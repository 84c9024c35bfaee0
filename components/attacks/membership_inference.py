"""Identity-level membership inference: was this person in the FR model's training set?
(DESIGN.md section 7, metrics.json block ``membership_inference``.)

The idea. Membership inference (Shokri et al., "Membership Inference Attacks against
Machine Learning Models", S&P 2017; Yeom et al., "Privacy Risk in Machine Learning", CSF
2018) exploits that a model behaves differently on the data it was trained on. For face
recognition the unit of privacy is the *person*, not the picture: a face model is trained
to pull every image of a training identity onto one class centre, so the identity's
images -- including images the model never saw -- land closer to each other and closer to
a class centre than those of a stranger. Identity-level (user-level) inference asks about
all of a person's images at once (Song and Shmatikov, "Auditing Data Provenance in
Text-Generation Models", KDD 2019, user-level inference; Chen et al., "FACE-AUDITOR:
Data Auditing in Facial Recognition Systems", USENIX Security 2023, identity-level
auditing of few-shot FR models from the similarity of a person's embeddings).

Variant built here (score-based, no shadow model), one score per candidate identity from
the attacked system's outputs only:

* ``template`` (any system): how tightly the identity's stored templates cluster, the mean
  pairwise cosine of its L2-normalised, flip-averaged templates ``system(x)`` (off the
  diagonal). Memorised identities cluster tighter.
* ``confidence`` (systems with a classifier head, ``system.logits``): the mean over the
  identity's images of the largest class cosine the head gives (flip-averaged); a member's
  images sit next to "their" class centre, a stranger's next to nobody's.
* ``combined``: the mean of the available signals after each is standardised by the mean
  and standard deviation of the PUBLIC identities' scores.

Calibration. Public identities are people the attacker knows to be non-members (its own
data). Every signal is turned into a z-score against that non-member population, which
puts signals of different scale on one axis without ever seeing a member, and the
attacker's operating threshold is the (1 - target_fpr) quantile of the public scores.
No member labels are used to choose or combine scores: ``score: auto`` is ``combined``
when the system exposes a head and ``template`` otherwise, decided before any scoring.
(Picking the best signal by its AUC on the targets would be an oracle choice, biased
upwards -- by about one standard error at these identity counts -- even on a model that
never saw anyone; the per-signal AUCs are logged in the strength for diagnosis only.)

Measures (members = train-split identities, label 1; non-members = test-split identities,
label 0; scikit-learn ``roc_auc_score``, TPR at FPR as in components.metrics.operating_point):

* ``auc``: area under the ROC of the membership score.
* ``tpr_at_fpr_1e-2``: TPR at FPR = 1e-2 read off the ROC conservatively (the best TPR
  among ROC points with FPR <= 1e-2, no interpolation; Carlini et al., "Membership
  Inference Attacks From First Principles", S&P 2022, report this low-FPR regime). With
  fewer than 100 non-member identities this is the TPR at FPR = 0: the share of members
  scoring above every non-member.
* ``advantage``: max(0, 2 * AUC - 1) (components.metrics.advantage), with
  ``tpr_at_fpr_1e-3`` and the counts ``n_members`` / ``n_non_members`` behind every rate.

The strength also records the *calibrated* operating point: the TPR and FPR the
public-quantile threshold actually achieves on the targets -- what an attacker without
labels would get.

Threat model: black-box query access to the deployed system -- the templates it stores
for images and, where the system has one, its classifier head's class cosines (the
training-identity logits); several images of each candidate person (the attacker holds
photos of the person, not necessarily the training photos); a set of public identities
known to be non-members. No weights, no training data, no shadow models.

Artifacts (when ``ctx.workdir`` is set): ``membership_roc.png``, the ROC of every signal
on a log FPR axis (members vs non-members), and ``membership_scores.csv``, one row per
identity (split, membership label, raw signals, combined score) -- identity numbers and
numbers only, no images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.attacks.measures import frozen
from components.defenses.base import ProtectedSystem
from components.metrics.advantage import from_auc
from components.metrics.embeddings import extract_features, to_model_tensor
from components.metrics.operating_point import positive_rate_at
from components.metrics.plots import roc_plot

__all__ = ["ATTACK", "DEFAULTS", "MembershipInference", "identity_signals", "membership_measures",
           "tpr_at_fpr"]

@dataclass
class MembershipInferenceConfig:
    score: Literal["auto", "combined", "template", "confidence"] = "auto"   # auto | combined | template | confidence
    target_fpr: float = 1e-2   # the low-FPR operating point (measure key stays tpr_at_fpr_1e-2)
    max_images_per_identity: int = 0   # 0 = all; else a seeded subset per identity (cost knob)
    flip: bool = True   # flip-average templates and logits (insightface protocol)
    batch_size: int = 256


DEFAULTS: dict = asdict(MembershipInferenceConfig())   # the plain dict the attack merges its params over

SCORES = ("auto", "combined", "template", "confidence")
MEMBER_SPLIT, NON_MEMBER_SPLIT, CALIBRATION_SPLIT = "train", "test", "public"
_MIN_STD = 1e-6


def tpr_at_fpr(labels, scores, fpr_target: float) -> float:
    """TPR at FPR `fpr_target` in the project's one convention (components.metrics.
    operating_point: at most floor(fpr * n) non-members above the threshold, no interpolation)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    return positive_rate_at(s[y], s[~y], fpr_target)[0]


def membership_measures(labels, scores, fpr_target: float = 1e-2) -> dict:
    """{"auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3", "advantage", "n_members", "n_non_members"}
    for membership labels (1 member) and scores; advantage = max(0, 2 AUC - 1). With fewer
    than 1 / fpr non-members a TPR at that FPR is the TPR at FPR 0 (the counts say so)."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("membership measures need both members and non-members")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores must be finite")
    auc = float(roc_auc_score(y, s))
    return {"auc": auc, "tpr_at_fpr_1e-2": tpr_at_fpr(y, s, fpr_target), "tpr_at_fpr_1e-3": tpr_at_fpr(y, s, 1e-3),
            "advantage": from_auc(auc), "n_members": int(y.sum()), "n_non_members": int((y == 0).sum())}


def _has_head(system: ProtectedSystem, probe: torch.Tensor) -> bool:
    try:
        with torch.inference_mode():
            system.logits(probe)
    except NotImplementedError:
        return False
    return True


def _device_of(system: torch.nn.Module, fallback) -> torch.device:
    for t in list(system.parameters()) + list(system.buffers()):
        return t.device
    return torch.device(fallback)


def identity_signals(system: ProtectedSystem, images: np.ndarray, rows: np.ndarray, identities: np.ndarray,
                     use_head: bool, flip: bool = True, batch_size: int = 256, device="cpu") -> pd.DataFrame:
    """Per identity (index of the frame): ``template`` (mean pairwise cosine of its
    L2-normalised templates) and, with ``use_head``, ``confidence`` (mean over its images
    of the max class cosine of ``system.logits``). ``rows`` index the uint8 image store;
    identities with fewer than two images are left out (tightness needs a pair)."""
    x = images[rows]
    t = extract_features(system, x, batch_size=batch_size, flip=flip, device=device).astype(np.float64)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    conf = None
    if use_head:
        lg = extract_features(system.logits, x, batch_size=batch_size, flip=flip, device=device).astype(np.float64)
        conf = lg.max(axis=1) / (2.0 if flip else 1.0)
    out = {}
    for ident in np.unique(identities):
        k = np.flatnonzero(identities == ident)
        if len(k) < 2:
            continue
        g = t[k] @ t[k].T
        n = len(k)
        rec = {"template": float((g.sum() - np.trace(g)) / (n * (n - 1))), "images": n}
        if conf is not None:
            rec["confidence"] = float(conf[k].mean())
        out[int(ident)] = rec
    return pd.DataFrame.from_dict(out, orient="index")


def _select_rows(manifest: pd.DataFrame, splits: tuple[str, ...], cap: int, seed: int) -> pd.DataFrame:
    part = manifest[manifest["split"].isin(splits)].sort_values("index")
    if cap and cap > 0:
        rng = np.random.default_rng(seed)
        keep = []
        for _, g in part.groupby("identity", sort=True):
            idx = g["index"].to_numpy()
            keep.append(np.sort(rng.choice(idx, size=min(cap, len(idx)), replace=False)) if len(idx) > cap else idx)
        part = part[part["index"].isin(np.concatenate(keep))]
    return part


class MembershipInference:
    config_class = MembershipInferenceConfig   # its params block (params.yaml's schema reads it)
    name = "membership_inference"

    def applies_to(self, system: ProtectedSystem) -> str | None:
        return None   # every system stores templates; the head signal is used where it exists

    def run(self, ctx: AttackContext) -> AttackResult:
        p = {**DEFAULTS, **(ctx.params or {})}
        unknown = set(p) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"membership_inference: unknown params {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        if p["score"] not in SCORES:
            raise ValueError(f"membership_inference: score must be one of {SCORES}, got {p['score']!r}")
        target_fpr = float(p["target_fpr"])
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"membership_inference: target_fpr must be in (0, 1), got {target_fpr}")
        m = ctx.manifest
        if "split" not in m.columns:
            raise NotApplicable("the manifest has no split column: members and non-members are undefined")
        part = _select_rows(m, (MEMBER_SPLIT, NON_MEMBER_SPLIT, CALIBRATION_SPLIT),
                            int(p["max_images_per_identity"]), ctx.seed)
        n_ids = part.groupby("split")["identity"].nunique()
        need = {MEMBER_SPLIT: 1, NON_MEMBER_SPLIT: 1, CALIBRATION_SPLIT: 2}
        short = [f"{s} ({int(n_ids.get(s, 0))} < {k})" for s, k in need.items() if n_ids.get(s, 0) < k]
        if short:
            raise NotApplicable("membership inference needs member (train), non-member (test) and at least two "
                                "calibration (public) identities; too few in: " + ", ".join(short))

        rows = part["index"].to_numpy()
        idents = part["identity"].to_numpy()
        with frozen(ctx.system) as system:
            device = _device_of(system, ctx.device)
            probe = to_model_tensor(ctx.images[rows[:2]]).to(device)
            head = _has_head(system, probe)
            mode = p["score"]
            if mode == "confidence" and not head:
                raise NotApplicable(f"{ctx.defense}: no classifier head, so no confidence score")
            if mode == "auto":
                mode = "combined" if head else "template"
            use_head = head and mode in ("combined", "confidence")
            sig = identity_signals(system, ctx.images, rows, idents, use_head=use_head, flip=bool(p["flip"]),
                                   batch_size=int(p["batch_size"]), device=device)

        split_of = part.groupby("identity")["split"].first()
        sig["split"] = split_of.reindex(sig.index).to_numpy()
        signals = [c for c in ("template", "confidence") if c in sig.columns]
        pub = sig[sig["split"] == CALIBRATION_SPLIT]
        if len(pub) < 2:
            raise NotApplicable("membership inference needs at least two public identities with two images each")
        for c in signals:
            mu, sd = float(pub[c].mean()), float(pub[c].std(ddof=1))
            sig["z_" + c] = (sig[c] - mu) / max(sd, _MIN_STD)
        used = signals if mode == "combined" else [mode]
        sig["score"] = sig[["z_" + c for c in used]].mean(axis=1)

        ev = sig[sig["split"].isin([MEMBER_SPLIT, NON_MEMBER_SPLIT])].copy()
        ev["member"] = (ev["split"] == MEMBER_SPLIT).astype(int)
        if ev["member"].nunique() < 2:
            raise NotApplicable("members and non-members with two images each are both needed")
        y = ev["member"].to_numpy()
        measures = membership_measures(y, ev["score"].to_numpy(), target_fpr)

        thr = float(np.quantile(sig.loc[sig["split"] == CALIBRATION_SPLIT, "score"], 1.0 - target_fpr))
        flagged = ev["score"].to_numpy() > thr
        strength = {
            "members": int(y.sum()),
            "non_members": int((y == 0).sum()),
            "calibration_identities": int(len(pub)),
            "score": mode if mode != "combined" else "combined(" + "+".join(used) + ")",
            "signals": used,
            "signal_auc": {c: float(roc_auc_score(y, ev[c])) for c in signals},
            "images": int(len(rows)),
            "max_images_per_identity": int(p["max_images_per_identity"]),
            "flip": bool(p["flip"]),
            "target_fpr": target_fpr,
            "calibrated_threshold": thr,
            "calibrated_tpr": float(flagged[y == 1].mean()),
            "calibrated_fpr": float(flagged[y == 0].mean()),
            "architecture": "score-based (no shadow model), public-z-scored",
            "epochs": 0,
        }
        artifacts: dict[str, Path] = {}
        if ctx.workdir is not None:
            wd = Path(ctx.workdir)
            curves = {f"combined ({'+'.join(used)})" if mode == "combined" else mode: (y, ev["score"].to_numpy())}
            if mode == "combined" and len(used) > 1:
                curves.update({c: (y, ev[c].to_numpy()) for c in used})
            artifacts["membership_roc"] = roc_plot(
                {name: (scores, labels) for name, (labels, scores) in curves.items()}, wd / "membership_roc.png",
                f"{ctx.defense}: identity membership ({int(y.sum())} members vs {int((y == 0).sum())} non-members)",
                legend="auc", far_min=1e-3, xlabel="False positive rate (non-member identities flagged)",
                ylabel="True positive rate (member identities flagged)")
            table = sig.rename_axis("identity").reset_index()
            table["member"] = np.where(table["split"] == MEMBER_SPLIT, 1,
                                       np.where(table["split"] == NON_MEMBER_SPLIT, 0, -1))
            wd.mkdir(parents=True, exist_ok=True)
            table.to_csv(wd / "membership_scores.csv", index=False)
            artifacts["membership_scores"] = wd / "membership_scores.csv"
        return AttackResult(measures=measures, strength=strength, artifacts=artifacts)


ATTACK = MembershipInference()
