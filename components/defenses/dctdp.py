"""DCTDP: learnable privacy budgets in the frequency domain (Ji et al., "Privacy-preserving
face recognition with learnable privacy budgets in frequency domain", ECCV 2022; Tencent
TFace `recognition/tasks/dctdp`).

| paper / TFace | here |
|---|---|
| block DCT (u = 8 at 112 px), DC channels dropped, 189 left | the same (components/freq); u = 2 at 32 px |
| x'_i = x_i + mu_i + Delta_i / eps_i Lap(0, 1), eps = softmax(rho) eps_mean N | the same, per element, every forward |
| TFace: Delta_i = 1, no clip, budget_mean 4 | `mode: tface` |
| TFace: one noise draw per forward, shared by the batch | one draw per image (the paper's mechanism) |
| TFace: noise Adam lr 0.1, x 0.1 at epochs 10, 18, 22 of 24 | `mode: tface`: the same fractions of training |
| (not in the paper) | `mode: project`: clip to the range [lo_i, hi_i] of the public images |
| budget reported: eps_mean | eps_mean, N and epsilon_total = eps_mean x N (operating point) |

In the project's mode Delta_i = hi_i - lo_i, the range of each coefficient over the public
images (the server's own faces: no statistic of a private face enters the mechanism), and
`noise_lr` stays constant. The sweep (params `sweeps.dctdp`) runs both modes over the same
eps values, one curve each. TFace defines an auxiliary loss on the noise scales but never
adds it to the training loss; neither mode uses one.

rho and mu are learned jointly with the FR loss by their own optimizer; eps_mean is the
privacy knob (the sweep trains one system per value). The total per-image budget,
epsilon_total = eps_mean x N (N coefficients), is reported in the operating point. It is
not a differential-privacy guarantee for the face: in TFace's mode the sensitivity 1 is
not a bound on how much a coefficient changes between two faces (coefficients span many
times that), so the guarantee covers a change of one unit per coefficient; in the
project's mode the clip makes the bound hold for the clipped representation, but one
face's budget composes over its N coefficients (epsilon_total, in the hundreds or
thousands), which bounds nothing useful about the face.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


MODES = ("project", "tface")
TFACE_STAGES = (10 / 24, 18 / 24, 22 / 24)   # TFace's train.yaml: lr x 0.1 at epochs 10, 18, 22 of 24


@dataclass
class DCTDPConfig:
    eps_mean: float = 1.0        # mean privacy budget per element: the privacy knob
    mode: Literal["project", "tface"] = "project"   # tface: TFace's mechanism (sensitivity 1, no clip)
    upsample: int = 2
    noise_lr: float = 0.01       # Adam on rho and mu (tface: its initial lr, decayed in TFace's stages)
    train: dict = field(default_factory=dict)     # FR training overrides (else the baseline's)
    backbone: dict = field(default_factory=dict)  # backbone kwargs overrides


class LaplaceBudget(nn.Module):
    """x + mu + Delta / eps * Laplace(0, 1), eps from softmax(rho). With `clipped` (the
    project's mode) x is first clipped to [lo, hi] and Delta = hi - lo; without (TFace's),
    nothing is clipped and Delta = 1."""

    def __init__(self, shape: tuple[int, ...], eps_mean: float, clipped: bool = True):
        super().__init__()
        if eps_mean <= 0:
            raise ValueError(f"eps_mean must be > 0, got {eps_mean}")
        self.eps_mean = float(eps_mean)
        # through components.defenses.base.clip: adaptive attackers pass it straight through
        self.clips = bool(clipped)
        self.rho = nn.Parameter(torch.zeros(shape))
        self.mu = nn.Parameter(torch.zeros(shape))
        self.register_buffer("lo", torch.zeros(shape))
        self.register_buffer("hi", torch.ones(shape))

    def budgets(self) -> torch.Tensor:
        """eps_i, of the representation's shape; their mean is eps_mean."""
        n = self.rho.numel()
        return (torch.softmax(self.rho.flatten(), 0) * self.eps_mean * n).view_as(self.rho)

    def sensitivity(self) -> torch.Tensor:
        return self.hi - self.lo if self.clips else torch.ones_like(self.lo)

    def scales(self) -> torch.Tensor:
        return self.sensitivity() / self.budgets()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clips:
            x = clip(x, self.lo, self.hi)
        noise = torch.distributions.Laplace(torch.zeros_like(x), torch.ones_like(x)).sample()
        return x + self.mu + self.scales() * noise


class DCTDPFront(nn.Module):
    """Images -> block DCT -> drop the DC channels -> Laplace mechanism."""

    def __init__(self, upsample: int, shape: tuple[int, ...], eps_mean: float, clipped: bool = True):
        super().__init__()
        self.dct = BlockDCT(upsample=upsample)
        keep = [c for c in range(self.dct.channels) if c not in DC_CHANNELS]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.noise = LaplaceBudget(shape, eps_mean, clipped=clipped)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        return self.dct(x).index_select(1, self.keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(self.clean(x))


class _NoiseHooks(TrainHooks):
    """The noise parameters have their own optimizer (the paper trains them jointly)."""

    def __init__(self, front: DCTDPFront, lr: float, stages: tuple[int, ...] = ()):
        self.front = front
        self.lr = lr
        self.stages = tuple(int(s) for s in stages)   # steps at which the lr falls tenfold (TFace)
        self.opt = torch.optim.Adam(front.noise.parameters(), lr=lr)

    def extra_optimizers(self):
        return [self.opt]

    def transform_batch(self, x, y, step):
        if self.stages:   # a function of the step, so a resumed run follows the same schedule
            lr = self.lr * 0.1 ** sum(step >= s for s in self.stages)
            for group in self.opt.param_groups:
                group["lr"] = lr
        return x, y

    def after_step(self, step, loss_value, batch):
        with torch.no_grad():
            eps = self.front.noise.budgets()
            return {"eps_max": float(eps.max()), "eps_min": float(eps.min())}

    def config(self) -> dict:
        config = {"noise_lr": self.lr, "eps_mean": self.front.noise.eps_mean}
        return {**config, "stages": list(self.stages)} if self.stages else config


class DCTDPDefense:
    config_class = DCTDPConfig   # its params block (params.yaml's schema reads it)
    name = "dctdp"
    privacy_knob = "eps_mean"


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel(("client_representation",), ("representation_recovery", "model_inversion"),
                           "Laplace noise with learned per-element budgets on the block-DCT coefficients the client "
                           "sends; the FR model trains on noised coefficients, so inverting the released model is in "
                           "scope too. eps_mean is a budget per coefficient of one representation; the per-face "
                           "budget epsilon_total = eps_mean x N composes over N coefficients and is not a differential "
                           "privacy guarantee for the face (tface mode: sensitivity 1 does not bound a coefficient)")

    def build(self, ctx: DefenseContext) -> FrequencySystem:
        cfg = config_from(DCTDPConfig, ctx.params)
        if cfg.mode not in MODES:
            raise ValueError(f"dctdp: mode must be one of {MODES}, got {cfg.mode!r}")
        tface = cfg.mode == "tface"
        torch.manual_seed(ctx.seed)
        probe = DCTDPFront(cfg.upsample, (1,), 1.0)
        channels, grid = representation_grid(probe.clean, ctx.train_images)
        front = DCTDPFront(cfg.upsample, (channels, grid, grid), cfg.eps_mean, clipped=not tface)
        if not tface:   # the public faces set the ranges: nothing private enters the mechanism
            if len(ctx.public_images) == 0:
                raise ValueError("dctdp: mode project reads its clip ranges from the public images, and there "
                                 "are none (data.splits.public); use mode tface or give the split public faces")
            lo, hi = _ranges(front, ctx.public_images)
            front.noise.lo.copy_(lo)
            front.noise.hi.copy_(hi)
        spec = frequency_spec(ctx.baseline.spec, channels, grid, cfg.backbone)
        tcfg = train_config(ctx, cfg.train)
        stages = ()
        if tface:   # TFace's stages, at the same fractions of this run's steps
            steps = tcfg.epochs * max(1, len(ctx.train_images) // tcfg.batch_size)   # as the training loop
            stages = tuple(int(round(f * steps)) for f in TFACE_STAGES)
        model = train_frequency_fr(ctx, front, spec, tcfg, hooks=_NoiseHooks(front, cfg.noise_lr, stages))
        with torch.no_grad():
            eps = front.noise.budgets()
            share_top = float(torch.topk(eps.flatten(), max(1, eps.numel() // 10)).values.sum() / eps.sum())
        measures = {"eps_min": float(eps.min()), "eps_max": float(eps.max()),
                    "budget_share_top10pct": share_top,
                    "mean_noise_scale": float(front.noise.scales().detach().mean()),
                    "elements": int(eps.numel()), "epsilon_total": float(eps.sum())}
        return self._system(front, model.backbone, model.head, spec, cfg, channels, grid, measures)

    def _system(self, front, backbone, head, spec, cfg: DCTDPConfig, channels, grid, measures) -> FrequencySystem:
        elements = channels * grid * grid
        return FrequencySystem("dctdp", front, backbone, head, {
            "fr_spec": spec, "upsample": cfg.upsample, "shape": [channels, grid, grid], "eps_mean": cfg.eps_mean,
            "mode": cfg.mode,
            "operating_point": {"eps_mean": cfg.eps_mean, "upsample": cfg.upsample, "mode": cfg.mode,
                                "elements": elements, "epsilon_total": cfg.eps_mean * elements},
            "measures": measures})

    def rebuild(self, config: dict) -> FrequencySystem:
        from components.models.fr_model import build_fr_model

        model = build_fr_model(config["fr_spec"])
        front = DCTDPFront(config["upsample"], tuple(config["shape"]), config["eps_mean"],
                           clipped=config.get("mode", "project") != "tface")
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
