"""How much of a face a reconstruction gives back, as the reconstruction attacks report it.

* Visual similarity: SSIM and PSNR (torchmetrics) of a reconstruction against its source.
  Images are float tensors in [-1, 1], so both use an explicit ``data_range=2.0`` (the
  width of that interval): SSIM's stabilisers are C1 = (0.01 * 2)^2, C2 = (0.03 * 2)^2 and
  PSNR = 10 log10(2^2 / MSE). Both are computed per image and averaged over images.
* SAR, the successful attack rate of Mai et al. ("On the reconstruction of face images
  from deep face templates", TPAMI 2019, type-I / type-II attacks): the share of
  reconstructions that the independent evaluation FR model (the judge) accepts, against
  the source image (type 1) and another image of the same identity (type 2), at the
  threshold where the judge's false-match rate is `far` (1e-3) over every cross-identity
  pair of the test identities (components.metrics.operating_point: accept = cosine strictly
  above the threshold). Scores are cosines of flip-averaged, L2-normalised judge features.
* The ceiling of SAR type 2 is the judge's own acceptance of the genuine originals paired
  the same way: a perfect reconstruction scores it, so advantage = SAR type 2 / ceiling
  puts reconstruction on the scale of every other attack (components.metrics.advantage).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from components.metrics.advantage import ratio_to_ceiling
from components.metrics.embeddings import extract_features, to_model_tensor
from components.metrics.operating_point import all_pairs_operating_point

__all__ = ["DATA_RANGE", "PSNR_CAP_DB", "ssim_psnr", "ssim_psnr_each", "evaluation_features", "judge_threshold",
           "accept_rate", "accepted", "sar", "sar_threshold", "reconstruction_measures"]

DATA_RANGE = 2.0          # images live in [-1, 1]
PSNR_CAP_DB = 100.0       # per-image PSNR of identical images (MSE = 0) is capped here, not inf


def _as_float_images(x, what: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy or float (N, 3, H, W) in [-1, 1] -> float32 CPU tensor."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return to_model_tensor(x)
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        raise ValueError(f"{what}: expected uint8 (N, H, W, 3) numpy or float (N, 3, H, W), got {t.dtype}")
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"{what}: expected (N, 3, H, W) float images, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32)


def ssim_psnr(recon, target) -> tuple[float, float]:
    """(mean SSIM, mean PSNR in dB) of reconstructions against their targets.

    Inputs are float (N, 3, H, W) in [-1, 1] (or uint8 (N, H, W, 3)); data_range = 2.0, the
    width of [-1, 1]. SSIM: torchmetrics, gaussian window 11 / sigma 1.5, per image then
    averaged. PSNR: torchmetrics per image (dim = C, H, W), each capped at PSNR_CAP_DB so
    that an exact copy gives a finite number, then averaged.
    """
    r = _as_float_images(recon, "recon")
    t = _as_float_images(target, "target")
    if r.shape != t.shape:
        raise ValueError(f"recon {tuple(r.shape)} and target {tuple(t.shape)} differ in shape")
    if r.shape[0] == 0:
        raise ValueError("no images given")
    s, p = ssim_psnr_each(r, t)
    return float(s.mean()), float(p.mean())


def ssim_psnr_each(recon, target) -> tuple[np.ndarray, np.ndarray]:
    """Per image (SSIM, PSNR in dB) of `ssim_psnr`, before the average."""
    r = _as_float_images(recon, "recon").clamp(-1.0, 1.0)
    t = _as_float_images(target, "target")
    if r.shape != t.shape:
        raise ValueError(f"recon {tuple(r.shape)} and target {tuple(t.shape)} differ in shape")
    ssim = StructuralSimilarityIndexMeasure(data_range=DATA_RANGE, reduction="none")
    psnr = PeakSignalNoiseRatio(data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return (ssim(r, t).double().numpy().reshape(-1),
            psnr(r, t).clamp(max=PSNR_CAP_DB).double().numpy().reshape(-1))


def _backbone(evaluation) -> nn.Module:
    return evaluation.backbone if hasattr(evaluation, "backbone") else evaluation


def evaluation_features(evaluation, images, batch_size: int = 256) -> np.ndarray:
    """Flip-averaged, L2-normalised features of the evaluation model (FRModel or module),
    for uint8 (N, H, W, 3) or float (N, 3, H, W) images in [-1, 1]. Runs in eval mode."""
    net = _backbone(evaluation)
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        f = extract_features(net, images, batch_size=batch_size, flip=True, device=device)
    finally:
        net.train(was_training)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def judge_threshold(features: np.ndarray, identities: np.ndarray, far: float = 1e-3) -> tuple[float, int]:
    """(cosine threshold, impostor pairs behind it): the judge accepts a pair when its
    cosine is above the threshold; at most `far` of every cross-identity pair of
    `features` (L2-normalised judge features, one row per image) passes."""
    pairs = all_pairs_operating_point(features, identities, max_rate=far)
    return pairs.threshold(far), pairs.n_impostor


def accept_rate(f_recon: np.ndarray, f_ref: np.ndarray, threshold: float) -> float:
    """Share of rows whose cosine (rows L2-normalised) is > threshold (the accept rule of
    components.metrics.operating_point)."""
    return float(np.mean(accepted(f_recon, f_ref, threshold)))


def accepted(f_recon: np.ndarray, f_ref: np.ndarray, threshold: float) -> np.ndarray:
    """Per row: is its cosine (rows L2-normalised) > threshold (`accept_rate` before the mean)."""
    if f_recon.shape != f_ref.shape:
        raise ValueError(f"feature shapes differ: {f_recon.shape} vs {f_ref.shape}")
    return np.einsum("ij,ij->i", f_recon.astype(np.float64), f_ref.astype(np.float64)) > threshold


def sar(evaluation, recon, sources, others, threshold: float) -> tuple[float, float]:
    """(SAR type 1, SAR type 2): share of reconstructions whose evaluation cosine with the
    source image (type 1) / with another image of the same identity (type 2) is > threshold.

    recon[i] reconstructs sources[i]; others[i] is another image of sources[i]'s identity
    (None: type 2 is NaN). Images as in `evaluation_features`. Sanity anchors: the sources
    themselves as `recon` give type 1 = 1 (cosine 1 > any threshold < 1); type 2 of the
    sources is the evaluation model's own TAR on those pairs, the ceiling of type 2.
    """
    fr = evaluation_features(evaluation, recon)
    fs = evaluation_features(evaluation, sources)
    type1 = accept_rate(fr, fs, threshold)
    if others is None:
        return type1, float("nan")
    return type1, accept_rate(fr, evaluation_features(evaluation, others), threshold)


def sar_threshold(evaluation, images: np.ndarray, manifest, far: float = 1e-3, split: str = "test") -> float:
    """The judge's cosine threshold at false-match rate `far` over every cross-identity pair
    of `split`'s images (`judge_threshold`)."""
    part = manifest[manifest["split"] == split].sort_values("index")
    feats = evaluation_features(evaluation, images[part["index"].to_numpy()])
    return judge_threshold(feats, part["identity"].to_numpy(), far)[0]


def reconstruction_measures(evaluation, recons: torch.Tensor, targets: torch.Tensor, identities: np.ndarray,
                            partner: np.ndarray, far: float = 1e-3, bootstrap=None) -> tuple[dict, float, dict]:
    """(the metrics.json block of a reconstruction attack, the SAR threshold used, the
    bootstrap replicates of ssim, sar_type2 and advantage when `bootstrap` is given).

    `recons[i]` reconstructs `targets[i]` (of identity `identities[i]`); `partner[i]` is the
    position of another target of the same identity (-1: none). ssim is clipped to [0, 1]
    (a negative mean SSIM carries no more of the face than 0); psnr_db; sar_type1 /
    sar_type2 as in `sar`, at the judge's threshold over every cross-identity pair of the
    targets; `sar_ceiling`, the judge's acceptance of each target's genuine partner (what a
    perfect reconstruction gets), and `advantage` = sar_type2 / sar_ceiling; `impostor_pairs`
    behind the threshold. Each image's judge features are computed once. ValueError when no
    target has a partner (SAR type 2 undefined)."""
    has = np.flatnonzero(partner >= 0)
    if len(has) == 0:
        raise ValueError("no target identity has a second image: SAR type 2 is undefined")
    s_each, p_each = ssim_psnr_each(recons, targets)
    fs = evaluation_features(evaluation, targets)
    threshold, impostors = judge_threshold(fs, identities, far)
    fr = evaluation_features(evaluation, recons)
    s1 = accept_rate(fr, fs, threshold)
    hit2 = accepted(fr[has], fs[partner[has]], threshold)
    ceil = accepted(fs[has], fs[partner[has]], threshold)
    s2, ceiling = float(hit2.mean()), float(ceil.mean())
    measures = {"ssim": float(min(1.0, max(0.0, s_each.mean()))), "psnr_db": float(p_each.mean()),
                "sar_type1": float(s1), "sar_type2": s2, "sar_ceiling": ceiling,
                "advantage": ratio_to_ceiling(s2, ceiling), "impostor_pairs": int(impostors)}
    replicates = {}
    if bootstrap is not None:
        r2, rc = bootstrap.mean(hit2, identities[has]), bootstrap.mean(ceil, identities[has])
        with np.errstate(invalid="ignore", divide="ignore"):
            adv = np.where(rc > 0, np.clip(r2 / np.where(rc > 0, rc, 1.0), 0.0, 1.0), 0.0)
        replicates = {"ssim": np.clip(bootstrap.mean(s_each, identities), 0.0, 1.0), "sar_type2": r2,
                      "advantage": np.where(np.isfinite(rc), adv, np.nan)}
    return measures, threshold, replicates
