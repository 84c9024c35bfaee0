"""Measures shared by the reconstruction attacks (DESIGN.md section 7) and the plumbing
they share: which images an attacker may train on and which images are targets.

* Visual similarity: SSIM and PSNR (torchmetrics) of a reconstruction against its source.
  Images are float tensors in [-1, 1], so both use an explicit ``data_range=2.0`` (the
  width of that interval): SSIM's stabilisers are C1 = (0.01 * 2)^2, C2 = (0.03 * 2)^2 and
  PSNR = 10 log10(2^2 / MSE). Both are computed per image and averaged over images.
* SAR, the successful attack rate of Mai et al. ("On the reconstruction of face images
  from deep face templates", TPAMI 2019, type-I / type-II attacks): the share of
  reconstructions that the independent evaluation FR model accepts, at the threshold
  where its false-match rate on the clean test pairs is `far` (1e-3), against the source
  image (type 1) and against another image of the same identity (type 2). Scores are
  cosine similarities of flip-averaged, L2-normalised evaluation features, as in the
  verification protocol (components.metrics).
* Grids: originals above reconstructions, written only for PUBLIC identities (the
  attacker's own data); private faces never leave the run as pictures.
* Plumbing: `target_set` (the private test images, each with a partner image of the same
  identity for type 2), `public_set` (the attacker's images, ~10% held out for grids),
  `augment` (flip, shift, colour jitter of public images), `frozen` (a system queried or
  differentiated through, never changed), `config_from` (param overrides, typos refused).

Threat model of the attacks that use this: the attacker trains only on public identities
(split == "public"); private identities (train, test) are only ever targets.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from components.attacks.base import NotApplicable
from components.config import config_from  # noqa: F401  (re-exported: attacks read their params with it)
from components.metrics.embeddings import extract_features, to_model_tensor
from components.metrics.verification import roc

__all__ = [
    "DATA_RANGE",
    "PSNR_CAP_DB",
    "ssim_psnr",
    "sar_threshold",
    "threshold_at_far",
    "sar",
    "accept_rate",
    "reconstruction_grid",
    "evaluation_features",
    "Targets",
    "target_set",
    "public_set",
    "reconstruction_measures",
    "frozen",
    "augment",
    "config_from",
    "batched",
]

DATA_RANGE = 2.0          # images live in [-1, 1]
PSNR_CAP_DB = 100.0       # per-image PSNR of identical images (MSE = 0) is capped here, not inf


# --------------------------------------------------------------------------- image measures


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
    r = r.clamp(-1.0, 1.0)
    ssim = StructuralSimilarityIndexMeasure(data_range=DATA_RANGE, reduction="elementwise_mean")
    psnr = PeakSignalNoiseRatio(data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    s = float(ssim(r, t))
    p = psnr(r, t).clamp(max=PSNR_CAP_DB)
    return s, float(p.mean())


# --------------------------------------------------------------------------- SAR


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


def sar_threshold(evaluation, images: np.ndarray, manifest: pd.DataFrame, pairs: pd.DataFrame,
                  far: float = 1e-3) -> float:
    """Cosine threshold of the evaluation model at false-match rate `far` on the clean pairs.

    `images` is the uint8 store indexed by manifest `index`; `pairs` has columns a, b
    (manifest indices) and label (1 genuine, 0 impostor). The threshold is read off the
    same ROC as components.metrics.verification (`roc`, linear interpolation between its
    points, the point at fpr == far itself when it exists): on the ROC segment that
    contains fpr = far, the threshold is interpolated between the segment's two score
    thresholds with the same weight as TAR is in `tar_at_far`. When no score lies above
    the highest impostor (the segment starts at +inf) the highest impostor score is used,
    so that the rule `cosine > threshold` accepts no impostor there. With n impostor pairs
    and far < 1/n this is (about) the highest impostor score: FMR is then 0 on the pairs.
    """
    rows = _pair_rows(pairs)
    if rows.min() < 0 or rows.max() >= len(images):
        raise ValueError(f"pairs index images outside the store (range {rows.min()}..{rows.max()}, "
                         f"{len(images)} images)")
    del manifest  # pairs carry manifest indices == rows of the image store
    return _threshold_from_features(evaluation_features(evaluation, images[rows]), rows, pairs, far)


def threshold_at_far(scores: np.ndarray, labels: np.ndarray, far: float = 1e-3) -> float:
    """The `sar_threshold` rule on given similarity scores and 1/0 labels (see there)."""
    far = float(far)
    if not (0.0 < far < 1.0):
        raise ValueError(f"far must be in (0, 1), got {far}")
    fpr, _, thr = roc(scores, labels)
    j = int(np.searchsorted(fpr, far, side="right")) - 1
    if fpr[j] == far or j == fpr.shape[0] - 1:
        t = float(thr[j])
        return t if np.isfinite(t) else float(thr[1])
    w = (far - fpr[j]) / (fpr[j + 1] - fpr[j])
    hi, lo = thr[j], thr[j + 1]
    if not np.isfinite(hi):
        return float(lo)
    return float(hi + w * (lo - hi))


def _pair_rows(pairs: pd.DataFrame) -> np.ndarray:
    return np.unique(np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy()]))


def _threshold_from_features(feats: np.ndarray, rows: np.ndarray, pairs: pd.DataFrame, far: float) -> float:
    """Threshold from L2-normalised features `feats[i]` of manifest index `rows[i]`."""
    pos = pd.Series(np.arange(len(rows)), index=rows)
    fa = feats[pos[pairs["a"].to_numpy()].to_numpy()]
    fb = feats[pos[pairs["b"].to_numpy()].to_numpy()]
    scores = np.einsum("ij,ij->i", fa, fb).astype(np.float64)
    return threshold_at_far(scores, pairs["label"].to_numpy(), far)


def accept_rate(f_recon: np.ndarray, f_ref: np.ndarray, threshold: float) -> float:
    """Share of rows whose cosine (rows L2-normalised) is > threshold."""
    if f_recon.shape != f_ref.shape:
        raise ValueError(f"feature shapes differ: {f_recon.shape} vs {f_ref.shape}")
    return float(np.mean(np.einsum("ij,ij->i", f_recon, f_ref) > threshold))


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


# --------------------------------------------------------------------------- grid


def _to_uint8_hwc(x) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x
    t = _as_float_images(x, "grid images").clamp(-1, 1)
    return ((t.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().astype(np.uint8)


def reconstruction_grid(originals, recons, path, n: int = 8, *, splits: Sequence[str] | None = None,
                        min_cell: int = 64) -> Path:
    """PNG grid: up to `n` originals in the top row, their reconstructions below.

    Only PUBLIC identities may be drawn (the attacker's own data): callers pass
    `splits` (the split of each original) and a non-public split raises ValueError.
    Cells are enlarged (nearest) to at least `min_cell` px for viewing.
    """
    if splits is not None and any(s != "public" for s in splits):
        raise ValueError("reconstruction_grid draws public identities only; got splits "
                         f"{sorted(set(splits) - {'public'})}")
    o = _to_uint8_hwc(originals)[:n]
    r = _to_uint8_hwc(recons)[:n]
    if len(o) == 0 or o.shape != r.shape:
        raise ValueError(f"need equal, non-empty originals and recons, got {o.shape} and {r.shape}")
    k, h, w, _ = o.shape
    scale = max(1, math.ceil(min_cell / max(h, w)))
    pad = 2
    ch, cw = h * scale, w * scale
    grid = np.full((2 * ch + 3 * pad, k * cw + (k + 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(k):
        for row, img in enumerate((o[i], r[i])):
            big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            y = pad + row * (ch + pad)
            x = pad + i * (cw + pad)
            grid[y:y + ch, x:x + cw] = big
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- attack plumbing


@dataclass
class Targets:
    """Private enrolled images an attack reconstructs: rows (manifest indices, index
    order), images float (N, 3, H, W) in [-1, 1], and for type-2 SAR `partner[i]`, the
    position of the next image of the same identity (wrapping), -1 when there is none."""

    rows: np.ndarray
    images: torch.Tensor
    partner: np.ndarray


def target_set(images: np.ndarray, manifest: pd.DataFrame, split: str = "test") -> Targets:
    part = manifest[manifest["split"] == split].sort_values("index")
    if part.empty:
        raise ValueError(f"no target images: split {split!r} is empty")
    rows = part["index"].to_numpy()
    ident = part["identity"].to_numpy()
    partner = np.full(len(rows), -1, dtype=np.int64)
    for pid in np.unique(ident):
        pos = np.flatnonzero(ident == pid)
        if len(pos) > 1:
            partner[pos] = np.roll(pos, -1)
    return Targets(rows=rows, images=to_model_tensor(images[rows]), partner=partner)


def public_set(images: np.ndarray, manifest: pd.DataFrame, holdout: float = 0.1,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) float images of the PUBLIC split; a random `holdout` share of the
    public images (at least 1 when holdout > 0) is kept out of attacker training for grids."""
    rows = manifest.loc[manifest["split"] == "public", "index"].sort_values().to_numpy()
    if len(rows) < 2:
        raise ValueError(f"the attacker needs public images to train on; found {len(rows)}")
    n_hold = 0 if holdout <= 0 else min(len(rows) - 1, max(1, int(round(holdout * len(rows)))))
    perm = np.random.default_rng(seed).permutation(len(rows))
    hold = np.sort(rows[perm[:n_hold]])
    train = np.sort(rows[perm[n_hold:]])
    return to_model_tensor(images[train]), to_model_tensor(images[hold]) if n_hold else torch.empty(0)


def reconstruction_measures(evaluation, recons: torch.Tensor, targets: Targets, pairs: pd.DataFrame,
                            far: float = 1e-3) -> tuple[dict, float]:
    """(the metrics.json block of a reconstruction attack, the SAR threshold used).

    ssim is clipped to [0, 1] (a negative mean SSIM carries no more of the face than 0);
    psnr_db; sar_type1 / sar_type2 as in `sar`, at `sar_threshold(..., far)` on `pairs`.
    Each image's evaluation features are computed once: the test pairs' images are among
    the targets, so their features serve the threshold too. Type 2 runs over the targets
    that have a partner (all of them under the data contract)."""
    has = np.flatnonzero(targets.partner >= 0)
    if len(has) == 0:   # cannot happen with the data contract (>= 2 images per identity)
        raise NotApplicable("no target identity has a second image: SAR type 2 is undefined")
    s, p = ssim_psnr(recons, targets.images)
    fs = evaluation_features(evaluation, targets.images)
    rows = _pair_rows(pairs)
    if not np.isin(rows, targets.rows).all():
        raise ValueError("the verification pairs refer to images outside the targets (expected clean test pairs)")
    threshold = _threshold_from_features(fs, targets.rows, pairs, far)
    fr = evaluation_features(evaluation, recons)
    s1 = accept_rate(fr, fs, threshold)
    s2 = accept_rate(fr[has], fs[targets.partner[has]], threshold)
    measures = {"ssim": float(min(1.0, max(0.0, s))), "psnr_db": float(p),
                "sar_type1": float(s1), "sar_type2": float(s2)}
    return measures, threshold


class frozen:
    """Context manager: a system in eval mode with gradients off for its parameters (and on
    `device` when given), all restored on exit. Attacks query the system or differentiate
    through it; they never train it, and the caller gets it back as it was."""

    def __init__(self, module: nn.Module, device: torch.device | str | None = None):
        self.module = module
        self.device = None if device is None else torch.device(device)

    def __enter__(self):
        self._training = self.module.training
        self._grads = [(p, p.requires_grad) for p in self.module.parameters()]
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        self._device = tensors[0].device if tensors else None
        if self.device is not None and self._device is not None and self._device != self.device:
            self.module.to(self.device)
        self.module.eval()
        for p, _ in self._grads:
            p.requires_grad_(False)
        return self.module

    def __exit__(self, *exc):
        for p, flag in self._grads:
            p.requires_grad_(flag)
        self.module.train(self._training)
        if self.device is not None and self._device is not None and self._device != self.device:
            self.module.to(self._device)
        return False


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2, color: float = 0.1) -> torch.Tensor:
    """Attacker-side augmentation of public images in [-1, 1]: random horizontal flip,
    translation by up to `shift` px (reflect padding), per-channel gain and offset jitter of
    up to `color`. Every augmented image is a new (query, image) training pair."""
    n, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(dev)[:, None, None, None], torch.flip(x, dims=[3]), x)
    if shift > 0:
        padded = nn.functional.pad(x, (shift, shift, shift, shift), mode="reflect")
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if color > 0:
        gain = 1 + color * (2 * torch.rand(n, 3, 1, 1, generator=gen) - 1)
        off = color * (2 * torch.rand(n, 3, 1, 1, generator=gen) - 1)
        x = (x * gain.to(dev) + off.to(dev)).clamp(-1, 1)
    return x


def batched(fn, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """fn over x in batches on `device` under no_grad; the result on CPU."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out.append(fn(x[i:i + batch_size].to(device)).detach().to("cpu"))
    return torch.cat(out)


def fit_reconstructor(net: nn.Module, train_x: torch.Tensor, batch_loss, cfg, gen: torch.Generator, device,
                      label: str = "", progress: bool = False) -> list[float]:
    """The training loop both reconstruction attacks share: Adam with a cosine schedule over
    `cfg.epochs` shuffled (and, with `cfg.augment`, augmented) public batches; the ragged last
    batch is dropped for BatchNorm. `batch_loss(xb)` gives the attack's loss on a batch.
    Returns the mean loss per epoch."""
    bs = effective_batch(cfg, train_x.shape[0])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = train_x.shape[0] // bs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(train_x.shape[0], generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            xb = train_x[perm[i * bs:(i + 1) * bs]]
            if cfg.augment:
                xb = augment(xb, gen)
            loss = batch_loss(xb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        history.append(total / max(1, steps_per_epoch))
        if progress:
            print(f"[{label}] epoch {epoch + 1}/{cfg.epochs} loss {history[-1]:.4f}")
    net.eval()
    return history


def fit_or_share(ctx, what: str, cfg, surface, system: nn.Module, net: nn.Module, train_x: torch.Tensor,
                 batch_loss, gen: torch.Generator, device, extras=lambda: {}) -> tuple[list[float], dict, str | None]:
    """`fit_reconstructor` on `net`, or the same network trained earlier against a system
    whose `surface` is the same function (components.attacks.sharing). Returns (the loss
    history, the extras `extras()` gave after training, the defense it was trained for when
    reused, else None)."""
    from components.attacks.sharing import trained_or_shared

    def train() -> dict:
        history = fit_reconstructor(net, train_x, batch_loss, cfg, gen, device,
                                    label=f"{what.split('/')[0]}:{ctx.defense}", progress=ctx.progress)
        return {"history": history, **extras()}

    out, source = trained_or_shared(ctx, what, asdict(cfg), surface, system, net, train, device)
    return out["history"], out, source


@dataclass
class ReconstructionData:
    """What both reconstruction attacks start from: seeded generator, the attacker's public
    images (training and held-out-for-the-grid) and the private targets."""

    seed: int
    gen: torch.Generator
    train_x: torch.Tensor
    hold_x: torch.Tensor
    targets: Targets

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[-2:])


def reconstruction_data(ctx, cfg) -> ReconstructionData:
    seed = ctx.seed if cfg.seed is None else cfg.seed
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, hold_x = public_set(ctx.images, ctx.manifest, holdout=cfg.holdout, seed=seed)
    return ReconstructionData(seed, gen, train_x, hold_x, target_set(ctx.images, ctx.manifest, "test"))


def effective_batch(cfg, n: int) -> int:
    """The batch size actually used: at most n, at least 2 (BatchNorm)."""
    return max(2, min(cfg.batch_size, n))


def reconstruction_result(ctx, cfg, name: str, data: ReconstructionData, recons: torch.Tensor,
                          grid_recons: torch.Tensor | None) -> tuple[dict, float, dict]:
    """(measures, SAR threshold, artifacts) of a reconstruction attack; the grid shows
    held-out public images only."""
    measures, threshold = reconstruction_measures(ctx.evaluation, recons, data.targets, ctx.pairs, far=cfg.far)
    workdir = Path(ctx.workdir) if ctx.workdir is not None else Path(tempfile.mkdtemp(prefix=f"privface-{name}-"))
    artifacts = {}
    if grid_recons is not None:
        artifacts["grid"] = reconstruction_grid(data.hold_x, grid_recons, workdir / f"{name}_grid.png",
                                                n=cfg.grid_n, splits=["public"] * len(data.hold_x))
    return measures, threshold, artifacts
