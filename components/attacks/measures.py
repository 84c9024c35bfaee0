"""The plumbing the reconstruction attacks share: which images an attacker may train on
and which are targets, the training loop of their networks, and their metrics.json block.
The measures themselves (SSIM/PSNR, SAR and its threshold, the block of a reconstruction
attack) live in components.metrics.reconstruction.

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

import logging

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

from components.attacks.base import NotApplicable
from components.config import config_from  # noqa: F401  (re-exported: attacks read their params with it)
from components.metrics.embeddings import to_model_tensor
from components.metrics.reconstruction import _as_float_images, reconstruction_measures

logger = logging.getLogger(__name__)

__all__ = [
    "reconstruction_grid",
    "Targets",
    "target_set",
    "public_set",
    "frozen",
    "augment",
    "config_from",
    "batched",
]

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
    order), images float (N, 3, H, W) in [-1, 1], their identities, and for type-2 SAR
    `partner[i]`, the position of the next image of the same identity (wrapping), -1 when
    there is none."""

    rows: np.ndarray
    images: torch.Tensor
    partner: np.ndarray
    identities: np.ndarray


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
    return Targets(rows=rows, images=to_model_tensor(images[rows]), partner=partner, identities=ident)


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
            logger.info("[%s] epoch %d/%d loss %.4f", label, epoch + 1, cfg.epochs, history[-1])
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
                          grid_recons: torch.Tensor | None) -> tuple[dict, float, dict, dict]:
    """(measures, SAR threshold, artifacts, bootstrap replicates) of a reconstruction attack;
    the grid shows held-out public images only."""
    t = data.targets
    if not (t.partner >= 0).any():   # cannot happen under the data contract (>= 2 images per identity)
        raise NotApplicable("no target identity has a second image: SAR type 2 is undefined")
    measures, threshold, replicates = reconstruction_measures(ctx.evaluation, recons, t.images, t.identities,
                                                              t.partner, far=cfg.far, bootstrap=ctx.bootstrap)
    workdir = Path(ctx.workdir) if ctx.workdir is not None else Path(tempfile.mkdtemp(prefix=f"privface-{name}-"))
    artifacts = {}
    if grid_recons is not None:
        artifacts["grid"] = reconstruction_grid(data.hold_x, grid_recons, workdir / f"{name}_grid.png",
                                                n=cfg.grid_n, splits=["public"] * len(data.hold_x))
    return measures, threshold, artifacts, replicates
