"""PPFR-FD: privacy-preserving FR in the frequency domain without key management (Wang et
al., AAAI 2022), the masking that the adaptive hybrid masking paper builds on.

No public code exists, so this is our variant of the paper's two steps; DESIGN.md asks
for it to be stated exactly:

1. Analysis (channel selection). The 192 block-DCT channels (components.freq; u=4 at the demo's 32
   px, a 16x16 grid: at u=2, an 8x8 grid, verification fell from 0.927 to 0.817) are scaled to unit standard deviation and gated by learnable sigmoid gates g_c;
   a short FR training of the baseline architecture on the gated channels minimises
       CE(FR) + w_vis * sum_c g_c * E_c / sum_c E_c,
   E_c the channel's share of image energy (Parseval: DCT energy = pixel energy of the
   centred YCbCr image): the "face visualisation penalty" of the paper, which pushes the
   gates of high-energy channels down unless the FR loss needs them. The DC channels are
   always dropped. Channels are then kept in decreasing gate order while the kept energy
   stays within 1 - energy_removed (default: at least 90% of the energy removed), up to
   `max_channels`. The removed share is measured on the public images and reported.
2. Fast masking (no key). Each kept channel map of each image is standardised on its own
   (minus its mean over the grid, divided by its standard deviation). This erases the
   per-channel amplitudes and offsets, which carry most of what survives of the image's
   appearance after step 1, while the spatial pattern of each channel, which FR uses, is
   kept. There is nothing secret: the transform is fixed, public, and per image.

Threat model. The server (or anyone who reads the client's uploads) sees only the masked
representation and knows the whole transform and the FR model (Kerckhoffs). It may train
a recovery network on public faces through the transform (the battery's representation
recovery) and invert the stored templates (template inversion). The defense claims
visual privacy of the upload (recovery SSIM), not unlinkability of templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from components.config import config_from
from components.defenses.base import DefenseContext, ThreatModel
from components.defenses.frequency import FrequencySystem, frequency_spec, train_config, train_frequency_fr
from components.freq import DC_CHANNELS, BlockDCT, channel_energy
from components.metrics.embeddings import to_model_tensor
from components.training.loop import TrainHooks


@dataclass
class PPFRFDConfig:
    upsample: int = 2
    energy_removed: float = 0.9     # at least this share of the image energy is dropped
    max_channels: int = 64          # at most this many channels are kept
    w_vis: float = 5.0              # weight of the visualisation penalty in the analysis
    analysis_epochs: int = 3
    train: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)


class ChannelMask(nn.Module):
    """Images -> block DCT -> keep the selected channels -> per-image channel standardisation."""

    def __init__(self, upsample: int, keep: list[int]):
        super().__init__()
        self.dct = BlockDCT(upsample=upsample)
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long))

    @property
    def channels(self) -> int:
        return int(self.keep.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return standardise(self.dct(x).index_select(1, self.keep))


def standardise(r: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The fast masking: each channel map of each image to zero mean, unit std."""
    mean = r.mean(dim=(2, 3), keepdim=True)
    std = r.std(dim=(2, 3), keepdim=True)
    return (r - mean) / (std + eps)


class _Gates(nn.Module):
    """Analysis front end: DCT, per-channel unit scaling, sigmoid gates."""

    def __init__(self, dct: BlockDCT, scale: torch.Tensor):
        super().__init__()
        self.dct = dct
        self.register_buffer("scale", scale)
        self.logits = nn.Parameter(torch.full((dct.channels,), 2.0))

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def forward(self, x):
        return self.dct(x) / self.scale[None, :, None, None] * self.gates()[None, :, None, None]


class _AnalysisHooks(TrainHooks):
    def __init__(self, gates: _Gates, share: torch.Tensor, w_vis: float):
        self.g = gates
        self.share = share
        self.w_vis = w_vis
        self.opt = torch.optim.Adam(gates.parameters(), lr=0.05)

    def extra_optimizers(self):
        return [self.opt]

    def loss(self, model, head, x, y):
        emb = model(x)
        ce = nn.functional.cross_entropy(head(emb, y), y)
        penalty = (self.g.gates() * self.share.to(x.device)).sum()
        with torch.no_grad():
            scores = head.cosine(emb)
        return ce + self.w_vis * penalty, scores

    def after_step(self, step, loss_value, batch):
        with torch.no_grad():
            return {"kept_energy_soft": float((self.g.gates() * self.share).sum())}

    def config(self):
        return {"w_vis": self.w_vis}


def energy_shares(dct: BlockDCT, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Each channel's share of the image energy over `images` (sums to 1)."""
    total = torch.zeros(dct.channels)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            total += channel_energy(dct(to_model_tensor(images[i:i + batch]))) * len(images[i:i + batch])
    return total / total.sum()


def select_channels(gates: torch.Tensor, share: torch.Tensor, energy_removed: float, max_channels: int) -> list[int]:
    """Non-DC channels in decreasing gate order while the kept energy share stays within
    1 - energy_removed, at most max_channels (returned sorted)."""
    budget = 1.0 - energy_removed
    kept, used = [], 0.0
    for c in torch.argsort(gates, descending=True).tolist():
        if c in DC_CHANNELS:
            continue
        if used + float(share[c]) > budget:
            continue
        kept.append(c)
        used += float(share[c])
        if len(kept) >= max_channels:
            break
    if not kept:
        raise ValueError(f"no channel fits an energy budget of {budget:.3f}; lower energy_removed")
    return sorted(kept)


def analyse(ctx: DefenseContext, cfg) -> tuple[list[int], dict]:
    """The analysis step: learned gates trade FR loss against kept energy; returns the kept
    channels and the measures (energy removed on public images, gates)."""
    dct = BlockDCT(upsample=cfg.upsample)
    share = energy_shares(dct, ctx.train_images)
    with torch.no_grad():
        sample = dct(to_model_tensor(ctx.train_images[:256]))
        scale = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    gates = _Gates(dct, scale)
    grid = dct.grid(*ctx.train_images.shape[1:3])[0]
    spec = frequency_spec(ctx.baseline.spec, dct.channels, grid, cfg.backbone)
    tcfg = train_config(ctx, {**cfg.train, "epochs": cfg.analysis_epochs, "warmup_epochs": 0})
    train_frequency_fr(ctx, gates, spec, tcfg, hooks=_AnalysisHooks(gates, share, cfg.w_vis), checkpoint="analysis")
    g = gates.gates().detach()
    keep = select_channels(g, share, cfg.energy_removed, cfg.max_channels)
    public_share = energy_shares(dct, ctx.public_images)
    measures = {"energy_removed_public": float(1 - public_share[keep].sum()),
                "energy_removed_train": float(1 - share[keep].sum()),
                "channels_kept": len(keep),
                "gate_mean_kept": float(g[keep].mean()), "gate_mean_dropped": float(g[[c for c in range(len(g))
                                                                                    if c not in keep]].mean())}
    return keep, measures


class PPFRFDDefense:
    config_class = PPFRFDConfig   # its params block (params.yaml's schema reads it)
    name = "ppfrfd"
    privacy_knob = "energy_removed"


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel(("client_representation",), ("representation_recovery",),
                           "the client sends only the block-DCT channels its analysis kept (DC and most low-frequency "
                           "energy removed), standardised per image: it claims that the face cannot be recovered from "
                           "what leaves the client")

    def build(self, ctx: DefenseContext) -> FrequencySystem:
        cfg = config_from(PPFRFDConfig, ctx.params)
        torch.manual_seed(ctx.seed)
        keep, measures = analyse(ctx, cfg)
        front = ChannelMask(cfg.upsample, keep)
        grid = front.dct.grid(*ctx.train_images.shape[1:3])[0]
        spec = frequency_spec(ctx.baseline.spec, front.channels, grid, cfg.backbone)
        model = train_frequency_fr(ctx, front, spec, train_config(ctx, cfg.train))
        return system("ppfrfd", front, model, spec, cfg, keep, measures)

    def rebuild(self, config: dict) -> FrequencySystem:
        return rebuild_masked("ppfrfd", config)


def system(name: str, front: ChannelMask, model, spec: dict, cfg, keep: list[int], measures: dict,
           extra_op: dict | None = None) -> FrequencySystem:
    return FrequencySystem(name, front, model.backbone, model.head, {
        "fr_spec": spec, "upsample": cfg.upsample, "keep": list(keep),
        "operating_point": {"energy_removed": cfg.energy_removed, "channels_kept": len(keep), **(extra_op or {})},
        "measures": measures})


def rebuild_masked(name: str, config: dict) -> FrequencySystem:
    from components.models.fr_model import build_fr_model

    model = build_fr_model(config["fr_spec"])
    front = ChannelMask(config["upsample"], config["keep"])
    return FrequencySystem(name, front, model.backbone.eval(), model.head.eval(), config)


__all__ = ["ChannelMask", "PPFRFDConfig", "PPFRFDDefense", "analyse", "energy_shares", "select_channels",
           "standardise"]
