"""Representation recovery: reconstruct the face from what leaves the client.

Idea. A defense that transforms the image on the client (frequency-domain masking, DCT
channel dropping, learned noise) must not let the representation it sends be mapped back
to the face. The standard test of frequency-domain privacy-preserving FR (e.g. Ji et al.,
"Privacy-preserving face recognition with learnable privacy budgets in frequency domain",
ECCV 2022; Wang et al., "Privacy-preserving face recognition in the frequency domain",
AAAI 2022) trains an image-to-image network, a U-Net (Ronneberger et al., MICCAI 2015), on
(representation, image) pairs the attacker makes himself by running the client transform
on faces he owns, and measures how well it recovers unseen faces.

Variant built here (CPU scale). A small U-Net (`depth` levels of two 3x3 conv-BN-ReLU,
max-pool down, bilinear up, skip concatenation, widths w, 2w, 4w, ...; 1x1 conv and tanh
out) trained with an L1 loss and Adam (cosine schedule). The representation may have any
shape (C, h, w); it is first brought to the image size (H, W), then the U-Net runs at full
resolution:
  * h == H, w == W: a 3x3 conv C -> w;
  * H = s*h and W = s*w for an integer s > 1 (e.g. the (189, H/8, W/8) DCT channels of
    the frequency-domain defenses): learned sub-pixel upsampling, a 1x1 conv C -> w*s*s
    and PixelShuffle(s) (Shi et al., ESPCN, CVPR 2016), which can express a per-position
    linear map such as the inverse block DCT;
  * any other size: bilinear interpolation to (H, W) (area when shrinking), then 3x3 conv.
A representation that is not a (N, C, h, w) map (a vector) makes the attack NotApplicable
(template inversion covers vectors).

Threat model. The attacker intercepts the protected representations that the enrolled
(test-split, private) clients send, and can run the client transform as a black box on
faces of public identities (split == "public") only. Every training batch is a fresh query
(`system.protect` on the batch, under no_grad), so a stochastic defense adds fresh noise
each time, as it would for real clients. ~10% of the public images are held out of
training and drawn, with their recoveries, in the grid artifact; private faces are only
targets. Measures: SSIM/PSNR of the recovered test images against their sources, and SAR
type 1/2 judged by the independent evaluation model at FMR = 1e-3 (measures.py).

Shared work. The trained U-Net depends on the system's `protect` surface only; with
`ctx.shared` (components.attacks.sharing) it is trained once for all systems whose `protect`
is the same function (e.g. the baseline and AdvFace) and the reuse is recorded in the
strength (`shared_from`); the measures are always taken on each system's own outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from components.attacks.base import AttackContext, AttackResult, NotApplicable
from components.attacks.measures import (batched, config_from, effective_batch, fit_or_share,
                                         frozen, reconstruction_data, reconstruction_result)
from components.defenses.base import ProtectedSystem


@dataclass
class RepresentationRecoveryConfig:
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 16
    width: int = 16           # channels of the first U-Net level; level i has width * 2**i
    depth: int = 3            # U-Net levels (resolution H, H/2, ..., H/2**(depth-1))
    seed: int | None = None   # None: the context's seed
    holdout: float = 0.1      # share of public images kept out of training, drawn in the grid
    augment: bool = True
    far: float = 1e-3         # FMR of the SAR threshold
    grid_n: int = 8
    weight_decay: float = 0.0


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class _Resize(nn.Module):
    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = size

    def forward(self, x):
        shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
        if shrink:
            return F.interpolate(x, size=self.size, mode="area")
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class RecoveryUNet(nn.Module):
    """(N, C, h, w) representation -> (N, 3, H, W) image in [-1, 1]."""

    def __init__(self, in_shape: tuple[int, int, int], size: tuple[int, int], width: int = 16, depth: int = 3):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        H, W = (int(v) for v in size)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if min(H, W) % (2 ** (depth - 1)):
            raise ValueError(f"image size {(H, W)} is not divisible by 2**(depth-1) = {2 ** (depth - 1)}")
        if (h, w) == (H, W):
            self.stem = nn.Conv2d(c, width, 3, padding=1)
            self.upsampling = "none"
        elif H % h == 0 and W % w == 0 and H // h == W // w:
            s = H // h
            self.stem = nn.Sequential(nn.Conv2d(c, width * s * s, 1), nn.PixelShuffle(s))
            self.upsampling = f"sub-pixel x{s}"
        else:
            self.stem = nn.Sequential(_Resize((H, W)), nn.Conv2d(c, width, 3, padding=1))
            self.upsampling = "interpolate"
        widths = [width * 2 ** i for i in range(depth)]
        self.enc = nn.ModuleList([_double_conv(width, widths[0])] +
                                 [_double_conv(widths[i - 1], widths[i]) for i in range(1, depth)])
        self.dec = nn.ModuleList([_double_conv(widths[i] + widths[i - 1], widths[i - 1])
                                  for i in range(depth - 1, 0, -1)])
        self.out = nn.Conv2d(widths[0], 3, 1)
        self.shortcut = nn.Conv2d(width, 3, 1)   # linear path stem -> image (long residual)
        self.architecture = (f"U-Net depth {depth} widths {widths}, stem {self.upsampling} "
                             f"({c}x{h}x{w} -> {width}x{H}x{W})")

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = stem = self.stem(r)
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return torch.tanh(self.out(x) + self.shortcut(stem))


def recovery_network(ctx: AttackContext, cfg: RepresentationRecoveryConfig, system: ProtectedSystem,
                     data, device) -> tuple[RecoveryUNet, list[float], int, str | None, torch.Tensor]:
    """The attacker's U-Net from protected representations to faces, trained on fresh queries
    of public faces (or the same network trained earlier against an identical `protect`,
    components.attacks.sharing). `system` is frozen by the caller. Returns (net, loss
    history, queries, the defense it was trained for when shared, a probe representation).
    Model inversion in representation space decodes its inversions with it."""
    train_x = data.train_x
    probe = batched(system.protect, train_x[:2], 2, device)
    if probe.ndim != 4:
        raise NotApplicable(f"protect returns shape {tuple(probe.shape[1:])}, not a (C, h, w) map")
    net = RecoveryUNet(tuple(probe.shape[1:]), data.size, cfg.width, cfg.depth).to(device)
    queries = 0

    def batch_loss(xb):
        nonlocal queries
        with torch.no_grad():
            rep = system.protect(xb)      # a fresh query: fresh noise for stochastic defenses
        queries += xb.shape[0]
        return F.l1_loss(net(rep), xb)

    history, extras, shared_from = fit_or_share(ctx, "representation_recovery/unet", cfg, system.protect,
                                                system, net, train_x, batch_loss, data.gen, device,
                                                extras=lambda: {"queries": queries})
    return net, history, int(extras["queries"]), shared_from, probe


class RepresentationRecovery:
    config_class = RepresentationRecoveryConfig   # its params block (params.yaml's schema reads it)
    name = "representation_recovery"
    tie_break = "ssim"   # between variants of equal advantage (components.attacks.variants)

    def applies_to(self, system: ProtectedSystem) -> str | None:
        return None   # every system has a client transform (identity for the baseline)

    def run(self, ctx: AttackContext) -> AttackResult:
        cfg = config_from(RepresentationRecoveryConfig, ctx.params)
        device = torch.device(ctx.device)
        start = time.perf_counter()
        data = reconstruction_data(ctx, cfg)
        train_x, hold_x, targets = data.train_x, data.hold_x, data.targets
        bs = effective_batch(cfg, train_x.shape[0])

        with frozen(ctx.system, device) as system:
            net, history, queries, shared_from, probe = recovery_network(ctx, cfg, system, data, device)
            intercepted = batched(system.protect, targets.images, 64, device)   # what the clients sent
            recons = batched(net, intercepted, 64, device)
            grid_recons = batched(lambda x: net(system.protect(x)), hold_x, 64, device) if len(hold_x) else None

        measures, threshold, artifacts, replicates = reconstruction_result(ctx, cfg, "representation_recovery", data,
                                                                           recons, grid_recons)
        strength = {
            "attacker_images": int(train_x.shape[0]),
            "queries": int(queries),
            "epochs": int(cfg.epochs),
            "lr": float(cfg.lr),
            "batch_size": int(bs),
            "architecture": f"U-Net (depth {cfg.depth}, width {cfg.width}, stem {net.upsampling})",
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "loss": "L1",
            "representation_shape": list(probe.shape[1:]),
            "augment": bool(cfg.augment),
            "threshold": float(threshold),
            "targets": int(len(targets.rows)),
            "seconds": round(time.perf_counter() - start, 2),
            "final_loss": float(history[-1]) if history else float("nan"),
        }
        if shared_from is not None:   # the same U-Net, trained once against an identical protect
            strength["shared_from"] = shared_from
        return AttackResult(measures=measures, strength=strength, artifacts=artifacts, replicates=replicates)


ATTACK = RepresentationRecovery()

__all__ = ["ATTACK", "RepresentationRecovery", "RepresentationRecoveryConfig", "RecoveryUNet"]
