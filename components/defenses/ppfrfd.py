"""PPFR-FD: privacy-preserving FR in the frequency domain without key management (Wang, Liu,
Luo, Yang, Wang, AAAI 2022), the masking that the adaptive hybrid masking paper builds on.

| step | paper | here |
|---|---|---|
| analysis | block DCT, same-frequency coefficients gathered into channels; an analysis network trained on FR loss + a face-visualisation penalty ranks the channels | the same: 192 block-DCT channels (components.freq, u=4 at 32 px: a 16x16 grid), unit-scaled, gated by learnable sigmoid gates g_c; a short FR training minimises CE + w_vis * sum_c g_c E_c (E_c the channel's share of the AC energy); DC is gated off |
| channel selection | the channels the analysis finds important for visualisation but not for FR are dropped, DC included | non-DC channels in decreasing gate order, the selection ends at the first channel that would take the kept AC energy past 1 - energy_removed (or at max_channels) |
| knob | "more than 94% of the image energy can be dropped" (a result, not a knob) | `energy_removed`: the least share of the AC energy (public images: reported, see measures) that is dropped |
| fast masking | the remaining channels are masked by a fast, keyless transform; the text at hand (the abstract, and PartialFace, ICCV 2023, describing it) says only "channel-wise shuffle-and-mix" | `masking: shuffle_mix`: per image, a fresh random permutation of the standardised kept channels, each output channel the normalised sum of two neighbours in that order; `masking: standardise` (the default, see below): each kept channel map standardised per image, nothing random |
| threat model | an honest-but-curious server or eavesdropper sees the masked upload; no key to manage | the same, Kerckhoffs: the attacker knows the transform and the FR model, trains recovery on public faces through it (representation recovery) |

The knob. Energy is measured as the share of the AC energy (the 189 non-DC channels),
not of the total: at u=4 the three DC channels hold more than 90% of a face's energy, so
"remove 90% of the energy" is met by dropping DC alone and a total-energy knob does
nothing below that share. (Energy at native resolution, before the upsample, was the
other candidate; it has no per-channel split once the image is upsampled, so it could not
rank channels.) The cut is a prefix of the analysis ranking, not a fill: at u=4 most AC
channels are nearly empty (the bilinear upsample leaves little energy at high frequencies
within a block) and the visualisation penalty ranks them first, so a rule that skips a
channel that does not fit and goes on to the next fills the cap with near-empty channels
at any budget, and so does a prefix under a small cap: `max_channels` defaults to 189 (no
cap) so that the knob decides. With the prefix, a larger energy_removed cuts the same
ranking higher: it keeps no more channels and removes no less AC energy (the analysis
does not read the knob, so the ranking is the same at every value of a sweep with the
same seed). Measures: `energy_removed_ac_public` and `energy_removed_public` (AC and total
share removed on the public images; `_train` the same on the training images),
`channels_kept`; the numbers per knob value are in docs/experiments.md.

The fast masking. No code and no method text of the paper are public to us, only the
phrase above, so `shuffle_mix` is our reading of it: randomness drawn by the client per
image and thrown away, so nothing is shared and there is no key to manage, which is the
paper's claim; the FR network trains on the shuffled mixtures and must be invariant to the
draw. A fixed shuffle would be a public linear map that a Kerckhoffs attacker learns to
invert by training through it, adding nothing to standardisation, so it is not offered.
`standardise` is kept selectable and is the default: on the demo it verifies better
(docs/experiments.md, 2026-12-05, with the command). It is deterministic and public; it
erases per-channel amplitudes and offsets, not the spatial pattern of a channel, and the
representation-recovery attack measures what survives.

`analyse` is also hybrid's masking step (components.defenses.hybrid): with the same
analysis settings, seed and knob the two defenses keep the same channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from components.config import config_from
from components.defenses.base import DefenseContext, ThreatModel
from components.defenses.frequency import FrequencySystem, frequency_spec, train_config, train_frequency_fr
from components.freq import DC_CHANNELS, BlockDCT, channel_energy
from components.metrics.embeddings import to_model_tensor
from components.training.loop import TrainHooks

MASKINGS = ("standardise", "shuffle_mix")


@dataclass
class PPFRFDConfig:
    upsample: int = 4                # u: the DCT grid is size * u / 8 per side
    energy_removed: float = 0.99     # at least this share of the AC energy is dropped
    max_channels: int = 189          # at most this many channels are kept (189: every AC channel, no cap)
    w_vis: float = 5.0               # weight of the visualisation penalty in the analysis
    analysis_epochs: int = 3
    masking: Literal["standardise", "shuffle_mix"] = "standardise"
    train: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not 0.0 <= self.energy_removed < 1.0:
            raise ValueError(f"energy_removed must be in [0, 1), got {self.energy_removed}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {self.max_channels}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")


class ChannelMask(nn.Module):
    """Images -> block DCT -> keep the selected channels -> per-image channel standardisation
    -> (`shuffle_mix`) a fresh random shuffle and neighbour mix of the channels per image."""

    def __init__(self, upsample: int, keep: list[int], masking: str = "standardise"):
        super().__init__()
        if masking not in MASKINGS:
            raise ValueError(f"ChannelMask: masking must be one of {MASKINGS}, got {masking!r}")
        self.dct = BlockDCT(upsample=upsample)
        self.masking = masking
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long))

    @property
    def channels(self) -> int:
        return int(self.keep.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = standardise(self.dct(x).index_select(1, self.keep))
        return shuffle_mix(r) if self.masking == "shuffle_mix" else r

    def extra_repr(self) -> str:
        return f"channels={self.channels}, masking={self.masking}"


def standardise(r: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each channel map of each image to zero mean, unit std."""
    mean = r.mean(dim=(2, 3), keepdim=True)
    std = r.std(dim=(2, 3), keepdim=True)
    return (r - mean) / (std + eps)


def shuffle_mix(r: torch.Tensor) -> torch.Tensor:
    """Per image, a fresh random permutation pi of the C channels (torch's global RNG), then
    out_i = (r_pi(i) + r_pi(i+1 mod C)) / sqrt(2): channel order and identity are hidden,
    the spatial pattern that FR reads stays."""
    b, c = r.shape[:2]
    perm = torch.argsort(torch.rand(b, c, device=r.device), dim=1)
    shuffled = r.gather(1, perm[:, :, None, None].expand_as(r))
    return (shuffled + shuffled.roll(-1, dims=1)) / math.sqrt(2.0)


class _Gates(nn.Module):
    """Analysis front end: DCT, per-channel unit scaling, sigmoid gates (`off` channels gated to 0)."""

    def __init__(self, dct: BlockDCT, scale: torch.Tensor, off: tuple[int, ...] = ()):
        super().__init__()
        self.dct = dct
        self.register_buffer("scale", scale)
        on = torch.ones(dct.channels)
        on[list(off)] = 0.0
        self.register_buffer("on", on)
        self.logits = nn.Parameter(torch.full((dct.channels,), 2.0))

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def forward(self, x):
        g = self.gates() * self.on
        return self.dct(x) / self.scale[None, :, None, None] * g[None, :, None, None]


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


def ac_shares(share: torch.Tensor) -> torch.Tensor:
    """Shares of the AC energy: DC channels set to 0, the rest renormalised to sum to 1."""
    ac = share.clone()
    ac[list(DC_CHANNELS)] = 0.0
    return ac / ac.sum()


def select_prefix(gates: torch.Tensor, share: torch.Tensor, energy_removed: float, max_channels: int) -> list[int]:
    """ppfrfd's rule: non-DC channels in decreasing gate order; the selection ends at the
    first channel that would take the kept share past 1 - energy_removed, or at
    max_channels (returned sorted). Monotone: a larger energy_removed keeps a prefix of the
    same order, so no more channels and no more energy."""
    budget = 1.0 - energy_removed
    kept, used = [], 0.0
    for c in torch.argsort(gates, descending=True, stable=True).tolist():
        if c in DC_CHANNELS:
            continue
        if used + float(share[c]) > budget + 1e-12 or len(kept) >= max_channels:
            break
        kept.append(c)
        used += float(share[c])
    if not kept:
        raise ValueError(f"the analysis' first channel does not fit an AC energy budget of {budget:.3f}; "
                         "lower energy_removed")
    return sorted(kept)


def train_gates(ctx: DefenseContext, cfg) -> tuple[torch.Tensor, torch.Tensor, BlockDCT]:
    """The analysis training: returns (gates, total energy shares on the training images, dct).
    The penalty weighs AC shares; DC is gated off (it is always dropped)."""
    dct = BlockDCT(upsample=cfg.upsample)
    share = energy_shares(dct, ctx.train_images)
    with torch.no_grad():
        sample = dct(to_model_tensor(ctx.train_images[:256]))
        scale = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    gates = _Gates(dct, scale, off=DC_CHANNELS)
    penalty_share = ac_shares(share)
    grid = dct.grid(*ctx.train_images.shape[1:3])[0]
    spec = frequency_spec(ctx.baseline.spec, dct.channels, grid, cfg.backbone)
    tcfg = train_config(ctx, {**cfg.train, "epochs": cfg.analysis_epochs, "warmup_epochs": 0})
    train_frequency_fr(ctx, gates, spec, tcfg, hooks=_AnalysisHooks(gates, penalty_share, cfg.w_vis),
                       checkpoint="analysis")
    return gates.gates().detach(), share, dct


def removal_measures(keep: list[int], share_train: torch.Tensor, share_public: torch.Tensor) -> dict:
    """AC and total energy shares removed by keeping `keep`, on training and public images."""
    return {"energy_removed_public": float(1 - share_public[keep].sum()),
            "energy_removed_train": float(1 - share_train[keep].sum()),
            "energy_removed_ac_public": float(1 - ac_shares(share_public)[keep].sum()),
            "energy_removed_ac_train": float(1 - ac_shares(share_train)[keep].sum()),
            "channels_kept": len(keep)}


def analyse(ctx: DefenseContext, cfg) -> tuple[list[int], dict]:
    """The analysis step: learned gates trade FR loss against kept AC energy; returns the
    kept channels (`select_prefix` at cfg.energy_removed, cfg.max_channels) and the measures
    (energy removed, AC and total, on public and training images; gates)."""
    g, share, dct = train_gates(ctx, cfg)
    keep = select_prefix(g, ac_shares(share), cfg.energy_removed, cfg.max_channels)
    measures = removal_measures(keep, share, energy_shares(dct, ctx.public_images))
    dropped = [c for c in range(len(g)) if c not in keep and c not in DC_CHANNELS]
    measures.update({"energy_basis": "ac", "gate_mean_kept": float(g[keep].mean()),
                     "gate_mean_dropped": float(g[dropped].mean()) if dropped else float("nan")})
    return keep, measures


class PPFRFDDefense:
    config_class = PPFRFDConfig   # its params block (params.yaml's schema reads it)
    name = "ppfrfd"
    privacy_knob = "energy_removed"

    def threat_model(self, params: dict) -> ThreatModel:
        masking = (params or {}).get("masking", PPFRFDConfig.masking)
        how = ("shuffled and mixed per image at random (no key)" if masking == "shuffle_mix"
               else "standardised per image (no key, nothing random)")
        return ThreatModel(("client_representation",), ("representation_recovery",),
                           "the client sends only the block-DCT channels its analysis kept (DC and at least "
                           f"energy_removed of the AC energy dropped), {how}: it claims that the face cannot be "
                           "recovered from what leaves the client")

    def build(self, ctx: DefenseContext) -> FrequencySystem:
        cfg = config_from(PPFRFDConfig, ctx.params)
        cfg.validate()
        torch.manual_seed(ctx.seed)
        keep, measures = analyse(ctx, cfg)
        measures["masking"] = cfg.masking
        front = ChannelMask(cfg.upsample, keep, cfg.masking)
        grid = front.dct.grid(*ctx.train_images.shape[1:3])[0]
        spec = frequency_spec(ctx.baseline.spec, front.channels, grid, cfg.backbone)
        model = train_frequency_fr(ctx, front, spec, train_config(ctx, cfg.train))
        return system("ppfrfd", front, model, spec, cfg, keep, measures, extra_op={"masking": cfg.masking})

    def rebuild(self, config: dict) -> FrequencySystem:
        return rebuild_masked("ppfrfd", config)


def system(name: str, front: ChannelMask, model, spec: dict, cfg, keep: list[int], measures: dict,
           extra_op: dict | None = None) -> FrequencySystem:
    return FrequencySystem(name, front, model.backbone, model.head, {
        "fr_spec": spec, "upsample": cfg.upsample, "keep": list(keep), "masking": front.masking,
        "operating_point": {"energy_removed": cfg.energy_removed, "channels_kept": len(keep), **(extra_op or {})},
        "measures": measures})


def rebuild_masked(name: str, config: dict) -> FrequencySystem:
    from components.models.fr_model import build_fr_model

    model = build_fr_model(config["fr_spec"])
    front = ChannelMask(config["upsample"], config["keep"], config.get("masking", "standardise"))
    return FrequencySystem(name, front, model.backbone.eval(), model.head.eval(), config)


__all__ = ["MASKINGS", "ChannelMask", "PPFRFDConfig", "PPFRFDDefense", "ac_shares", "analyse", "energy_shares",
           "removal_measures", "select_prefix", "shuffle_mix", "standardise", "train_gates"]
