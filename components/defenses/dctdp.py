"""DCTDP: learnable privacy budgets in the frequency domain (Ji et al., "Privacy-preserving
face recognition with learnable privacy budgets in frequency domain", ECCV 2022; Tencent
TFace `recognition/tasks/dctdp`).

The client sends a noised block-DCT representation: the 3 DC channels are dropped (189
left), every element i is clipped to its range [lo_i, hi_i] so that its sensitivity is
Delta_i = hi_i - lo_i, and
    x'_i = x_i + mu_i + b_i * Laplace(0, 1),   b_i = Delta_i / eps_i,
    eps_i = softmax(rho)_i * eps_mean * N      (N elements; the mean budget is eps_mean).
rho and mu have the representation's shape, are learned jointly with the FR loss by their
own optimizer (Adam), and noise is drawn on every forward, at inference too. eps_mean is
the privacy knob (params `dctdp.eps_mean`); the sweep trains one system per value.

Variant (CPU scale, documented): on the demo (32 px) the image is upsampled by u=2 (TFace:
u=8 at 112 px), giving an 8x8 grid per channel (u=4, a 16x16 grid, measured 0.938 against
0.931 verification at 2.5x the training time); the ranges lo/hi are the per-element min and max
over the private training images (TFace derives its sensitivity from the data as well),
kept as buffers so that inference clips with the same bounds. Per-element budgets
(not per-channel) as in the paper. The FR backbone is the baseline's architecture with a
189-channel stride-1 stem.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from components.config import config_from
from components.defenses.base import DefenseContext, ThreatModel, clip
from components.defenses.frequency import (FrequencySystem, frequency_spec, representation_grid, train_config,
                                           train_frequency_fr)
from components.freq import DC_CHANNELS, BlockDCT
from components.metrics.embeddings import to_model_tensor
from components.training.loop import TrainHooks


@dataclass
class DCTDPConfig:
    eps_mean: float = 1.0        # mean privacy budget per element: the privacy knob
    upsample: int = 2
    noise_lr: float = 0.01       # Adam on rho and mu
    train: dict = field(default_factory=dict)     # FR training overrides (else the baseline's)
    backbone: dict = field(default_factory=dict)  # backbone kwargs overrides


class LaplaceBudget(nn.Module):
    """Clip to [lo, hi], add mu + (hi - lo) / eps * Laplace(0, 1) with eps from softmax(rho)."""

    clips = True   # through components.defenses.base.clip: adaptive attackers pass it straight through

    def __init__(self, shape: tuple[int, ...], eps_mean: float):
        super().__init__()
        if eps_mean <= 0:
            raise ValueError(f"eps_mean must be > 0, got {eps_mean}")
        self.eps_mean = float(eps_mean)
        self.rho = nn.Parameter(torch.zeros(shape))
        self.mu = nn.Parameter(torch.zeros(shape))
        self.register_buffer("lo", torch.zeros(shape))
        self.register_buffer("hi", torch.ones(shape))

    def budgets(self) -> torch.Tensor:
        """eps_i, of the representation's shape; their mean is eps_mean."""
        n = self.rho.numel()
        return (torch.softmax(self.rho.flatten(), 0) * self.eps_mean * n).view_as(self.rho)

    def scales(self) -> torch.Tensor:
        return (self.hi - self.lo) / self.budgets()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = clip(x, self.lo, self.hi)
        noise = torch.distributions.Laplace(torch.zeros_like(x), torch.ones_like(x)).sample()
        return x + self.mu + self.scales() * noise


class DCTDPFront(nn.Module):
    """Images -> block DCT -> drop the DC channels -> Laplace mechanism."""

    def __init__(self, upsample: int, shape: tuple[int, ...], eps_mean: float):
        super().__init__()
        self.dct = BlockDCT(upsample=upsample)
        keep = [c for c in range(self.dct.channels) if c not in DC_CHANNELS]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.noise = LaplaceBudget(shape, eps_mean)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        return self.dct(x).index_select(1, self.keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(self.clean(x))


class _NoiseHooks(TrainHooks):
    """The noise parameters have their own optimizer (the paper trains them jointly)."""

    def __init__(self, front: DCTDPFront, lr: float):
        self.front = front
        self.lr = lr
        self.opt = torch.optim.Adam(front.noise.parameters(), lr=lr)

    def extra_optimizers(self):
        return [self.opt]

    def after_step(self, step, loss_value, batch):
        with torch.no_grad():
            eps = self.front.noise.budgets()
            return {"eps_max": float(eps.max()), "eps_min": float(eps.min())}

    def config(self) -> dict:
        return {"noise_lr": self.lr, "eps_mean": self.front.noise.eps_mean}


class DCTDPDefense:
    config_class = DCTDPConfig   # its params block (params.yaml's schema reads it)
    name = "dctdp"
    privacy_knob = "eps_mean"


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel(("client_representation",), ("representation_recovery", "model_inversion"),
                           "Laplace noise with learned per-element budgets on the block-DCT coefficients the client "
                           "sends; the FR model trains on noised coefficients, so inverting the released model is in "
                           "scope too. eps_mean is a budget per coefficient of one representation, not a differential "
                           "privacy guarantee for the face")

    def build(self, ctx: DefenseContext) -> FrequencySystem:
        cfg = config_from(DCTDPConfig, ctx.params)
        torch.manual_seed(ctx.seed)
        probe = DCTDPFront(cfg.upsample, (1,), 1.0)
        channels, grid = representation_grid(probe.clean, ctx.train_images)
        front = DCTDPFront(cfg.upsample, (channels, grid, grid), cfg.eps_mean)
        lo, hi = _ranges(front, ctx.train_images)
        front.noise.lo.copy_(lo)
        front.noise.hi.copy_(hi)
        spec = frequency_spec(ctx.baseline.spec, channels, grid, cfg.backbone)
        tcfg = train_config(ctx, cfg.train)
        model = train_frequency_fr(ctx, front, spec, tcfg, hooks=_NoiseHooks(front, cfg.noise_lr))
        with torch.no_grad():
            eps = front.noise.budgets()
            share_top = float(torch.topk(eps.flatten(), max(1, eps.numel() // 10)).values.sum() / eps.sum())
        measures = {"eps_min": float(eps.min()), "eps_max": float(eps.max()),
                    "budget_share_top10pct": share_top,
                    "mean_noise_scale": float(front.noise.scales().detach().mean())}
        return self._system(front, model.backbone, model.head, spec, cfg, channels, grid, measures)

    def _system(self, front, backbone, head, spec, cfg: DCTDPConfig, channels, grid, measures) -> FrequencySystem:
        return FrequencySystem("dctdp", front, backbone, head, {
            "fr_spec": spec, "upsample": cfg.upsample, "shape": [channels, grid, grid], "eps_mean": cfg.eps_mean,
            "operating_point": {"eps_mean": cfg.eps_mean, "upsample": cfg.upsample},
            "measures": measures})

    def rebuild(self, config: dict) -> FrequencySystem:
        from components.models.fr_model import build_fr_model

        model = build_fr_model(config["fr_spec"])
        front = DCTDPFront(config["upsample"], tuple(config["shape"]), config["eps_mean"])
        return FrequencySystem("dctdp", front, model.backbone.eval(), model.head.eval(), config)


def _ranges(front: DCTDPFront, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element min and max of the clean (DC-free) representation over `images`."""
    lo = hi = None
    with torch.no_grad():
        for i in range(0, len(images), batch):
            r = front.clean(to_model_tensor(images[i:i + batch]))
            bl, bh = r.amin(0), r.amax(0)
            lo = bl if lo is None else torch.minimum(lo, bl)
            hi = bh if hi is None else torch.maximum(hi, bh)
    return lo, torch.maximum(hi, lo + 1e-3)


__all__ = ["DCTDPConfig", "DCTDPDefense", "DCTDPFront", "LaplaceBudget"]
