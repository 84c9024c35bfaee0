"""Membership inference at two levels: is this person in the FR model's training set
(identity level), and was this photo of a known member trained on (image level)?
(docs/design.md, metrics.json block ``membership_inference``.)

| paper | here |
|---|---|
| Shokri et al. 2017, Yeom et al. 2018: models differ on their data | the system's outputs only |
| identity level (Song and Shmatikov 2019; FACE-AUDITOR 2023) | members asked with held-out photos |
| LiRA offline (Carlini et al. 2022): reference models without x | references on public identities only |

The image level's calibration is a difference of z-scores: two reference models give no
per-photo variance to divide by.

Identity level, one score per candidate identity:
* ``template`` (any system): how tightly the identity's stored templates cluster, the mean
  pairwise cosine of its L2-normalised, flip-averaged templates. Members cluster tighter.
* ``confidence`` (systems with a classifier head): the mean over the photos of the largest
  class cosine; a member's photos sit next to "their" class centre, a stranger's next to
  nobody's.
* ``combined``: the mean of the available signals after each is standardised by the
  PUBLIC identities' scores (people the attacker knows to be non-members). ``score: auto``
  is ``combined`` with a head and ``template`` without, decided before any scoring: picking
  the best signal by its AUC on the targets would be an oracle choice.

Image level, one score per photo of the train identities that have held-out photos
(training photos are members, held-out photos non-members): the photo's ``template``
typicality (cosine to the mean template of the person's other photos) and, with a head,
its own-class cosine, each z-scored and calibrated by the photo's typicality under the
reference models, so that a photo that is easy for every model is not taken for a member.

Variants (params.yaml): the template and confidence signals alone and the image level
(combined, and confidence alone) run beside the plain attack, and the block's headline is
the strongest (components/attacks/variants.py). That choice is made on the targets, so the
headline is biased upwards by the selection (by about one standard error of the AUC on a
model that saw nobody): an over- rather than an under-estimate of the attack, which is the
side a privacy claim must err on. Its ``ci95`` is the chosen variant's, not widened for
the choice; every variant's own figures stay in ``variants``. The headline's level, and
with it what ``n_non_members`` counts, is in ``variant``.

Measures (scikit-learn ``roc_auc_score``; TPR at FPR in components.metrics.operating_point's
convention): ``auc``; ``advantage`` = max(0, 2 AUC - 1) (components.metrics.advantage);
``n_members`` / ``n_non_members``; ``tpr_at_fpr_1e-2`` and ``tpr_at_fpr_1e-3`` only where at
least 100 and 1,000 non-members stand behind them (with fewer, the rate would be a TPR at
FPR 0 under another name). The identity level has as many negatives as test identities; the
image level as many as held-out photos. ``ci95``: bootstrap over identities.

Threat model: black-box queries to the deployed system (its stored templates and, where it
has one, its head's class cosines); photos of each candidate person that are not the
training photos (identity level) or the photos in question (image level); public
identities known to be non-members, and for the image level models the attacker trains on
them. The strength records the calibrated operating point a label-free attacker gets.

Artifacts (when ``ctx.workdir`` is set): ``membership_roc.png`` (every signal, log FPR
axis) and ``membership_scores.csv`` (identity or photo numbers and scores, no images).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.attacks.measures import frozen
from components.defenses.base import ProtectedSystem
from components.metrics.advantage import from_auc
from components.data.views import split_view
from components.metrics.embeddings import extract_features, to_model_tensor
from components.metrics.operating_point import positive_rate_at
from components.metrics.plots import roc_plot

__all__ = ["ATTACK", "DEFAULTS", "MembershipInference", "identity_signals", "membership_measures",
           "tpr_at_fpr"]

@dataclass
class MembershipInferenceConfig:
    score: Literal["auto", "combined", "template", "confidence"] = "auto"   # auto | combined | template | confidence
    level: Literal["identity", "image"] = "identity"   # is this person / this photo in the training set
    target_fpr: float = 1e-2   # the low-FPR operating point (measure key stays tpr_at_fpr_1e-2)
    flip: bool = True   # flip-average templates and logits (insightface protocol)
    batch_size: int = 256
    references: int = 2         # image level: reference models trained on public identities only
    reference_epochs: int = 10  # their training epochs (the judge's architecture, a head over the public identities)


DEFAULTS: dict = asdict(MembershipInferenceConfig())   # the plain dict the attack merges its params over

SCORES = ("auto", "combined", "template", "confidence")
LEVELS = ("identity", "image")
MEMBER_SPLIT, HELD_OUT_SPLIT, NON_MEMBER_SPLIT, CALIBRATION_SPLIT = "train", "holdout", "test", "public"
_MIN_STD = 1e-6


def tpr_at_fpr(labels, scores, fpr_target: float) -> float:
    """TPR at FPR `fpr_target` in the project's one convention (components.metrics.
    operating_point: at most floor(fpr * n) non-members above the threshold, no interpolation)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    return positive_rate_at(s[y], s[~y], fpr_target)[0]


def membership_measures(labels, scores, fpr_target: float = 1e-2) -> dict:
    """{"auc", "advantage", "n_members", "n_non_members"} and, where at least 1 / FPR
    non-members stand behind it, "tpr_at_fpr_1e-2" (at `fpr_target`) and "tpr_at_fpr_1e-3",
    for membership labels (1 member) and scores; advantage = max(0, 2 AUC - 1). With fewer
    negatives a TPR at that FPR would be the TPR at FPR 0, so it is left out."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.min() == y.max():
        raise ValueError("membership measures need both members and non-members")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores must be finite")
    auc = float(roc_auc_score(y, s))
    n_neg = int((y == 0).sum())
    out = {"auc": auc, "advantage": from_auc(auc), "n_members": int(y.sum()), "n_non_members": n_neg}
    for key, fpr in (("tpr_at_fpr_1e-2", fpr_target), ("tpr_at_fpr_1e-3", 1e-3)):
        if n_neg >= math.ceil(1.0 / fpr - 1e-9):   # at least one negative may pass
            out[key] = tpr_at_fpr(y, s, fpr)
    return out


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


def _unit_templates(fn, images: np.ndarray, flip: bool, batch_size: int, device) -> np.ndarray:
    t = extract_features(fn, images, batch_size=batch_size, flip=flip, device=device).astype(np.float64)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def identity_signals(system: ProtectedSystem, images: np.ndarray, rows: np.ndarray, identities: np.ndarray,
                     use_head: bool, flip: bool = True, batch_size: int = 256, device="cpu") -> pd.DataFrame:
    """Per identity (index of the frame): ``template`` (mean pairwise cosine of its
    L2-normalised templates) and, with ``use_head``, ``confidence`` (mean over its images
    of the max class cosine of ``system.logits``). ``rows`` index the uint8 image store;
    identities with fewer than two images are left out (tightness needs a pair)."""
    x = images[rows]
    t = _unit_templates(system, x, flip, batch_size, device)
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


def typicality(templates: np.ndarray, identities: np.ndarray) -> np.ndarray:
    """Per photo: cosine of its (unit) template to the mean template of the other photos of
    its identity in the set (0 where it is the only one)."""
    out = np.zeros(len(templates))
    for ident in np.unique(identities):
        k = np.flatnonzero(identities == ident)
        if len(k) < 2:
            continue
        total = templates[k].sum(axis=0)
        others = (total[None, :] - templates[k]) / (len(k) - 1)
        others /= np.maximum(np.linalg.norm(others, axis=1, keepdims=True), 1e-12)
        out[k] = np.sum(templates[k] * others, axis=1)
    return out


def _subset(part: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """A seeded subset of at most `cap` photos of each identity of `part`."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, g in part.sort_values("index").groupby("identity", sort=True):
        idx = g["index"].to_numpy()
        keep.append(np.sort(rng.choice(idx, size=cap, replace=False)) if len(idx) > cap else idx)
    return part[part["index"].isin(np.concatenate(keep))] if keep else part


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), _MIN_STD)


def reference_models(ctx: AttackContext, p: dict, device) -> list[torch.nn.Module]:
    """Backbones of `p["references"]` FR models trained on the PUBLIC identities only (the
    judge's architecture, a head over the public identities, seeds seed + 1 ...): models
    that never saw a private photo, for the per-photo calibration of LiRA offline. Trained
    once per workdir and shared by every system (ctx.shared)."""
    from components.models.fr_model import build_fr_model, train_fr_model

    x, y, _ = split_view(ctx.images, ctx.manifest, CALIBRATION_SPLIT)
    spec = {**ctx.evaluation.spec, "num_classes": int(y.max()) + 1}
    cfg = {"epochs": int(p["reference_epochs"]), "batch_size": 64, "lr": 0.1, "warmup_epochs": 1}
    params = {"references": int(p["references"]), "train": cfg, "spec": spec}
    shared = getattr(ctx, "shared", None)
    key = None if shared is None else shared.key("membership_inference/references", params, ctx.seed, "public")
    hit = None if key is None else shared.get("membership_inference/references", key)
    states = None if hit is None else hit["states"]
    if states is None:
        states = []
        for k in range(int(p["references"])):
            model = train_fr_model(x, y, spec, {**cfg, "seed": int(ctx.seed) + 1 + k}, device=device, progress=False)
            states.append({n: v.detach().cpu() for n, v in model.backbone.state_dict().items()})
        if key is not None:
            shared.put("membership_inference/references", key, {"states": states})
    nets = []
    for state in states:
        net = build_fr_model(spec).backbone
        net.load_state_dict(state)
        nets.append(net.to(device).eval())
    return nets


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
        if p["level"] not in LEVELS:
            raise ValueError(f"membership_inference: level must be one of {LEVELS}, got {p['level']!r}")
        target_fpr = float(p["target_fpr"])
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"membership_inference: target_fpr must be in (0, 1), got {target_fpr}")
        if "split" not in ctx.manifest.columns:
            raise NotApplicable("the manifest has no split column: members and non-members are undefined")
        with frozen(ctx.system) as system:
            device = _device_of(system, ctx.device)
            rows = ctx.manifest["index"].to_numpy()[:2]
            head = _has_head(system, to_model_tensor(ctx.images[rows]).to(device))
            mode = p["score"]
            if mode == "confidence" and not head:
                raise NotApplicable(f"{ctx.defense}: no classifier head, so no confidence score")
            if mode == "auto":
                mode = "combined" if head else "template"
            if p["level"] == "image":
                return self._image_level(ctx, p, system, head, mode, target_fpr, device)
            return self._identity_level(ctx, p, system, head, mode, target_fpr, device)

    # ------------------------------------------------------------------ is this person a member

    def _identity_level(self, ctx, p, system, head, mode, target_fpr, device) -> AttackResult:
        m = ctx.manifest
        held = m[m["split"] == HELD_OUT_SPLIT]
        if held.empty:   # a split without held-out photos: members can only be asked with training photos
            members, member_photos = m[m["split"] == MEMBER_SPLIT], "training photos (the split holds no held-out ones)"
        else:
            members, member_photos = held, "held-out photos (no model trained on them)"
        counts = members.groupby("identity").size()
        cap = int(counts.median())   # every candidate is asked about with as many photos as a member has
        if cap < 2:
            raise NotApplicable(f"identity-level membership needs at least 2 photos of each member; the split holds "
                                f"{cap} held-out photo(s) per train identity (data.holdout_per_identity)")
        part = pd.concat([_subset(members[members["identity"].isin(counts.index[counts >= 2])], cap, ctx.seed),
                          _subset(m[m["split"] == NON_MEMBER_SPLIT], cap, ctx.seed),
                          _subset(m[m["split"] == CALIBRATION_SPLIT], cap, ctx.seed)])
        role = part["split"].replace({HELD_OUT_SPLIT: MEMBER_SPLIT})
        n_ids = part.assign(role=role).groupby("role")["identity"].nunique()
        need = {MEMBER_SPLIT: 1, NON_MEMBER_SPLIT: 1, CALIBRATION_SPLIT: 2}
        short = [f"{s} ({int(n_ids.get(s, 0))} < {k})" for s, k in need.items() if n_ids.get(s, 0) < k]
        if short:
            raise NotApplicable("membership inference needs member (train), non-member (test) and at least two "
                                "calibration (public) identities; too few in: " + ", ".join(short))
        rows = part["index"].to_numpy()
        idents = part["identity"].to_numpy()
        use_head = head and mode in ("combined", "confidence")
        sig = identity_signals(system, ctx.images, rows, idents, use_head=use_head, flip=bool(p["flip"]),
                               batch_size=int(p["batch_size"]), device=device)
        sig["split"] = pd.Series(role.to_numpy(), index=idents).groupby(level=0).first().reindex(sig.index).to_numpy()
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
        y, score = ev["member"].to_numpy(), ev["score"].to_numpy()
        thr = float(np.quantile(sig.loc[sig["split"] == CALIBRATION_SPLIT, "score"], 1.0 - target_fpr))
        flagged = score > thr
        strength = {
            "level": "identity",
            "members": int(y.sum()),
            "non_members": int((y == 0).sum()),
            "member_photos": member_photos,
            "photos_per_identity": cap,
            "calibration_identities": int(len(pub)),
            "score": mode if mode != "combined" else "combined(" + "+".join(used) + ")",
            "signals": used,
            "signal_auc": {c: float(roc_auc_score(y, ev[c])) for c in signals},
            "images": int(len(rows)),
            "flip": bool(p["flip"]),
            "target_fpr": target_fpr,
            "calibrated_threshold": thr,
            "calibrated_tpr": float(flagged[y == 1].mean()),
            "calibrated_fpr": float(flagged[y == 0].mean()),
            "architecture": "score-based (no shadow model), public-z-scored",
            "epochs": 0,
        }
        table = sig.rename_axis("identity").reset_index()
        table["member"] = np.where(table["split"] == MEMBER_SPLIT, 1,
                                   np.where(table["split"] == NON_MEMBER_SPLIT, 0, -1))
        curves = {c: ev[c].to_numpy() for c in used} if mode == "combined" and len(used) > 1 else {}
        return self._result(ctx, y, score, ev.index.to_numpy(), target_fpr, strength, table, curves,
                            f"combined ({'+'.join(used)})" if mode == "combined" else mode,
                            "identity membership", "identities")

    # ------------------------------------------------------------------ was this photo trained on

    def _image_level(self, ctx, p, system, head, mode, target_fpr, device) -> AttackResult:
        m = ctx.manifest
        held = m[m["split"] == HELD_OUT_SPLIT]
        if held.empty:
            raise NotApplicable("image-level membership needs held-out photos of the train identities "
                                "(data.holdout_per_identity > 0)")
        pool = m[m["split"].isin([MEMBER_SPLIT, HELD_OUT_SPLIT]) & m["identity"].isin(held["identity"].unique())]
        pool = pool.sort_values("index")
        x = ctx.images[pool["index"].to_numpy()]
        idents = pool["identity"].to_numpy()
        y = (pool["split"] == MEMBER_SPLIT).to_numpy().astype(int)
        flip, bs = bool(p["flip"]), int(p["batch_size"])
        raw = {"template": typicality(_unit_templates(system, x, flip, bs, device), idents)}
        if head and mode in ("combined", "confidence"):
            classes = np.unique(m.loc[m["split"] == MEMBER_SPLIT, "identity"].to_numpy())
            own = np.searchsorted(classes, idents)
            lg = extract_features(system.logits, x, batch_size=bs, flip=flip, device=device).astype(np.float64)
            raw["confidence"] = lg[np.arange(len(own)), own] / (2.0 if flip else 1.0)
        nets = reference_models(ctx, p, device)
        ref = np.mean([_zscore(typicality(_unit_templates(net, x, flip, bs, device), idents)) for net in nets], axis=0)
        calibrated = {c: _zscore(v) - ref for c, v in raw.items()}   # LiRA offline: the photo's own difficulty removed
        used = list(calibrated) if mode == "combined" else [mode]
        score = np.mean([calibrated[c] for c in used], axis=0)
        strength = {
            "level": "image",
            "members": int(y.sum()),
            "non_members": int((y == 0).sum()),
            "member_photos": "training photos of the train identities that have held-out photos",
            "non_member_photos": "their held-out photos (no model trained on them)",
            "score": mode if mode != "combined" else "combined(" + "+".join(used) + ")",
            "signals": used,
            "signal_auc": {c: float(roc_auc_score(y, v)) for c, v in raw.items()},
            "calibrated_signal_auc": {c: float(roc_auc_score(y, v)) for c, v in calibrated.items()},
            "references": len(nets),
            "reference_epochs": int(p["reference_epochs"]),
            "calibration": "per photo, LiRA offline: z-scored signal minus the mean z-scored typicality of the photo "
                           "under reference models trained on public identities only",
            "images": int(len(y)),
            "flip": flip,
            "target_fpr": target_fpr,
            "architecture": "score-based against the system, reference models of the judge's architecture",
            "epochs": int(p["reference_epochs"]),
        }
        table = pd.DataFrame({"index": pool["index"].to_numpy(), "identity": idents, "member": y,
                              **{f"raw_{c}": v for c, v in raw.items()}, "reference": ref, "score": score})
        curves = {f"{c} (uncalibrated)": v for c, v in raw.items()}
        return self._result(ctx, y, score, idents, target_fpr, strength, table, curves,
                            "calibrated " + "+".join(used), "photo membership", "photos")

    def _result(self, ctx, y, score, units, target_fpr, strength, table, extra_curves, label, what, noun):
        """Measures, their bootstrap replicates (over identities), the ROC figure and the score table."""
        measures = membership_measures(y, score, target_fpr)
        replicates = {}
        if ctx.bootstrap is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                auc = ctx.bootstrap.statistic(lambda w: roc_auc_score(y, score, sample_weight=w), units)
            replicates = {"auc": auc, "advantage": np.clip(2.0 * auc - 1.0, 0.0, 1.0)}
        artifacts: dict[str, Path] = {}
        if ctx.workdir is not None:
            wd = Path(ctx.workdir)
            curves = {label: (score, y), **{k: (v, y) for k, v in extra_curves.items()}}
            artifacts["membership_roc"] = roc_plot(
                curves, wd / "membership_roc.png",
                f"{ctx.defense}: {what} ({int(y.sum())} members vs {int((y == 0).sum())} non-members)",
                legend="auc", far_min=1e-3, xlabel=f"False positive rate (non-member {noun} flagged)",
                ylabel=f"True positive rate (member {noun} flagged)")
            wd.mkdir(parents=True, exist_ok=True)
            table.to_csv(wd / "membership_scores.csv", index=False)
            artifacts["membership_scores"] = wd / "membership_scores.csv"
        return AttackResult(measures=measures, strength=strength, artifacts=artifacts, replicates=replicates)


ATTACK = MembershipInference()
