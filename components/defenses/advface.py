"""AdvFace: stored templates perturbed against a shadow reconstruction attack.

| step | paper (Wang et al., CVPR 2023) | here |
|---|---|---|
| shadow | the server's model of the attacker: features -> face images | `ShadowDecoder` (DCGAN, BN) on clean templates of public images, L1, BN statistics recomputed on all public templates |
| adversarial feature | latent noise that disrupts the shadow's mapping | `mode: online`: PGD per template at enrolment, L2 (or Linf) ball `eps`, `steps` steps, ascent on L1(shadow(t'), x) |
| offline | not described in any text available here | `mode: offline` (advface_generator.py): a generator t -> delta trained before enrolment against the shadow, with a verification-score term; needs no photo at enrolment |
| stored | adversarial features, not the originals | t' = normalize(t + delta), on the unit sphere |
| FR network | unchanged | the baseline's backbone, frozen; probes are clean templates (`probe`) |
| judged by | reconstruction attacks | the battery's template inversion (another decoder design), plain and trained on stored templates of public faces (`variants.stored`) |

What the paper's text settles, and what is ours: only the abstract and Fig. 2's caption
were available (no method section, no code). The caption computes the loss between the
shadow image and its re-reconstruction, so the server never needs the photo; the online
mode here ascends the loss against the enrolled photo x instead (the server has it at
enrolment in this pipeline), the offline mode needs only the template. Architectures, the
budget, the step rule and the generator are ours. Measured history: docs/experiments.md.

Crafting never changes the system: PGD runs under enable_grad whatever the caller's mode,
with gradients for delta only, the shadow in eval mode (a stored template does not depend
on who else is enrolled in the batch), and delta treated as a constant for the caller;
the offline generator is a plain, differentiable forward pass.

Threat model. The server is honest and wants its template database to be useless to a
thief: the attacker holds the stored templates and white-box access to the FR model,
trains its own decoder on public faces (from clean templates, or from stored templates
that it enrols itself), and inverts the stored ones. Not protected: everything before the
template (the probe image itself).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.attacks.measures import batched, fit_reconstructor
from components.config import config_from
from components.defenses.advface_generator import PerturbationNet, generator_loss
from components.defenses.base import DefenseContext, ProtectedSystem, ThreatModel
from components.metrics.embeddings import to_model_tensor
from components.metrics.reconstruction import ssim_psnr
from components.models.fr_model import build_fr_model
from components.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint, weights_digest

__all__ = ["AdvFaceConfig", "AdvFaceDefense", "AdvFaceSystem", "ShadowDecoder", "pgd_delta", "DEFENSE"]


@dataclass
class AdvFaceConfig:
    mode: Literal["online", "offline"] = "online"   # online: PGD per template at enrolment | offline: a generator
    eps: float = 0.5              # radius of the perturbation ball (templates have norm 1)
    norm: Literal["l2", "linf"] = "l2"              # l2 | linf
    steps: int = 5                # PGD steps
    step_size: float | None = None  # None: 2.5 * eps / steps
    width: int = 8                # channels of the shadow's last hidden stage (earlier: 2x, 4x, ...)
    epochs: int = 20              # shadow training
    lr: float = 2e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    augment: bool = True
    holdout: float = 0.1          # share of public identities kept out of shadow training (measures)
    gen_hidden: int = 256         # offline: the generator's hidden width
    gen_epochs: int = 20          # offline: generator training on the shadow's public images
    gen_lr: float = 1e-3
    rec_weight: float = 10.0      # offline: weight of the verification-score drift against the shadow's loss

    def validate(self) -> None:
        if self.mode not in ("online", "offline"):
            raise ValueError(f"advface: mode must be 'online' or 'offline', got {self.mode!r}")
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"advface: norm must be 'l2' or 'linf', got {self.norm!r}")
        if self.eps < 0 or self.steps < 0:
            raise ValueError(f"advface: eps and steps must be >= 0, got eps={self.eps}, steps={self.steps}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"advface: holdout must be in [0, 1), got {self.holdout}")

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / max(1, self.steps)

    def shadow_settings(self) -> dict:
        """What defines the shadow (the sweep shares one shadow across eps)."""
        return {k: getattr(self, k) for k in ("width", "epochs", "lr", "batch_size", "weight_decay",
                                              "augment", "holdout")}


class ShadowDecoder(nn.Module):
    """Template (N, D) -> image (N, 3, H, W) in [-1, 1]: DCGAN generator (linear to 4x4,
    transposed-conv-BN-ReLU stages), the server's stand-in for a reconstruction attacker."""

    def __init__(self, dim: int, size: tuple[int, int], width: int = 8):
        super().__init__()
        h, w = size
        self.size = (int(h), int(w))
        stages = max(1, math.ceil(math.log2(max(h, w) / 4)))
        chans = [width * 2 ** (stages - 1 - i) for i in range(stages)]
        self.c0 = chans[0]
        self.fc = nn.Sequential(nn.Linear(dim, chans[0] * 16, bias=False), nn.BatchNorm1d(chans[0] * 16), nn.ReLU())
        ups = []
        for i in range(stages - 1):
            ups += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                    nn.ReLU()]
        self.ups = nn.Sequential(*ups)
        self.out = nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1)
        self.architecture = (f"DCGAN shadow: linear {dim}->{chans[0]}x4x4 (BN, ReLU), "
                             f"{stages - 1} x [convT4x4/2-BN-ReLU] {chans[1:]}, convT4x4/2 -> 3, tanh")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = self.out(self.ups(self.fc(t).view(t.shape[0], self.c0, 4, 4)))
        if x.shape[-2:] != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.tanh(x)


def _pixel_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image mean L1 (N,)."""
    return (recon - x).abs().flatten(1).mean(dim=1)


def pgd_delta(shadow: nn.Module, t: torch.Tensor, x: torch.Tensor, eps: float, steps: int, alpha: float,
              norm: str = "l2") -> torch.Tensor:
    """delta in the `norm` ball of radius eps that maximises the L1 loss of
    shadow(normalize(t + delta)) against x, by PGD from zero. The shadow is used as it is
    (put it in eval mode); gradients are taken for delta only."""
    delta = torch.zeros_like(t)
    if eps <= 0 or steps <= 0:
        return delta
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = _pixel_loss(shadow(F.normalize(t + delta, dim=1)), x).sum()   # images independent (eval BN)
        (g,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            if norm == "l2":
                delta = delta + alpha * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(eps))
            else:
                delta = (delta + alpha * g.sign()).clamp(-eps, eps)
    return delta.detach()


class AdvFaceSystem(ProtectedSystem):
    defense = "advface"

    def __init__(self, backbone: nn.Module, head: nn.Module, shadow: ShadowDecoder, fr_spec: dict,
                 cfg: AdvFaceConfig, measures: dict | None = None, generator: PerturbationNet | None = None):
        super().__init__()
        if (cfg.mode == "offline") != (generator is not None):
            raise ValueError("advface: the offline mode needs its generator, the online mode none")
        self.backbone = backbone
        self.head = head            # the baseline's training head (logits for white-box attacks)
        self.shadow = shadow
        self.generator = generator  # offline mode: t -> delta, trained before enrolment
        self.fr_spec = fr_spec
        self.cfg = cfg
        self._measures = dict(measures or {})

    def embed(self, representation):
        return self.backbone(representation)

    def probe(self, images: torch.Tensor) -> torch.Tensor:
        """The clean template normalize(backbone(x)) of a verification probe."""
        return self.template(self.embed(self.protect(images)))

    def perturbation(self, t: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """delta for clean templates t of `images`. Offline: the generator's output (the
        images are not used). Online: PGD, whatever the caller's grad mode; the system is
        left exactly as it was (only the shadow's train flag is touched, and restored)."""
        cfg = self.cfg
        if self.generator is not None:
            return self.generator(t)
        if cfg.eps <= 0 or cfg.steps <= 0:
            return torch.zeros_like(t)
        was_training = self.shadow.training
        try:
            with torch.inference_mode(False), torch.enable_grad():
                self.shadow.eval()
                return pgd_delta(self.shadow, t.detach().clone(), images.detach().clone(), cfg.eps, cfg.steps,
                                 cfg.alpha, cfg.norm)
        finally:
            self.shadow.train(was_training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The stored template t' = normalize(t + delta)."""
        t = self.probe(images)
        if self.cfg.eps <= 0 or (self.generator is None and self.cfg.steps <= 0):
            return t                                  # no perturbation: exactly the clean template
        return F.normalize(t + self.perturbation(t, images), dim=1)

    def operating_point(self) -> dict:
        return {"mode": self.cfg.mode, "eps": float(self.cfg.eps), "norm": self.cfg.norm,
                "steps": int(self.cfg.steps)}

    def config(self) -> dict:
        return {"fr_spec": self.fr_spec, "advface": asdict(self.cfg),
                "shadow": {"dim": int(self.shadow.fc[0].in_features), "size": list(self.shadow.size),
                           "width": int(self.cfg.width), "architecture": self.shadow.architecture},
                "measures": self._measures}


def _holdout_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a seeded share of the identities held out whole."""
    ids = np.unique(labels)
    n_hold = 0 if share <= 0 else min(len(ids) - 1, max(1, int(round(share * len(ids)))))
    held = np.random.default_rng(seed).permutation(ids)[:n_hold]
    mask = np.isin(labels, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _train_shadow(ctx: DefenseContext, cfg: AdvFaceConfig, backbone: nn.Module,
                  device) -> tuple[ShadowDecoder, np.ndarray, np.ndarray]:
    """The shadow decoder trained on public images (clean templates -> images), with BN
    statistics recomputed over the clean templates of all public images; its training rows
    and the held-out rows."""
    x_all = to_model_tensor(ctx.public_images)
    train_rows, hold_rows = _holdout_split(np.asarray(ctx.public_labels), cfg.holdout, ctx.seed)
    clean = lambda b: F.normalize(backbone(b), dim=1)   # noqa: E731
    dim = int(batched(clean, x_all[:2], 2, device).shape[1])
    torch.manual_seed(ctx.seed)
    shadow = ShadowDecoder(dim, tuple(x_all.shape[-2:]), cfg.width).to(device)
    ckpt = None if ctx.checkpoint_dir is None else Path(ctx.checkpoint_dir) / "advface_shadow.pt"
    key = fingerprint({"shadow": cfg.shadow_settings(), "seed": ctx.seed, "n": len(x_all), "dim": dim,
                       "baseline": weights_digest(backbone)[:16]})   # a retrained baseline invalidates the shadow
    saved = load_checkpoint(ckpt) if ckpt is not None else None
    if saved is not None and saved.get("fingerprint") == key:
        shadow.load_state_dict(saved["shadow"])
        return shadow.eval(), train_rows, hold_rows

    def batch_loss(xb):
        with torch.no_grad():
            tb = clean(xb)
        return _pixel_loss(shadow(tb), xb).mean()

    gen = torch.Generator().manual_seed(ctx.seed)
    fit_reconstructor(shadow, x_all[train_rows], batch_loss, cfg, gen, device, label="advface:shadow",
                      progress=ctx.progress)
    templates = batched(clean, x_all, 256, device)
    torch.optim.swa_utils.update_bn([templates.to(device)], shadow)   # exact statistics of the clean templates
    shadow.eval()
    if ckpt is not None:
        save_checkpoint(ckpt, {"fingerprint": key, "shadow": {k: v.cpu() for k, v in shadow.state_dict().items()}})
    return shadow, train_rows, hold_rows


def _train_generator(ctx: DefenseContext, cfg: AdvFaceConfig, backbone: nn.Module, shadow: ShadowDecoder,
                     train_rows: np.ndarray, device) -> PerturbationNet:
    """The offline mode's generator for cfg.eps, trained on the shadow's public images
    (clean templates recomputed per augmented batch) against the frozen shadow."""
    x_all = to_model_tensor(ctx.public_images)
    clean = lambda b: F.normalize(backbone(b), dim=1)   # noqa: E731
    dim = int(shadow.fc[0].in_features)
    torch.manual_seed(ctx.seed)
    generator = PerturbationNet(dim, cfg.eps, cfg.norm, cfg.gen_hidden).to(device)
    frozen = copy.deepcopy(shadow).to(device).eval().requires_grad_(False)
    ckpt = None if ctx.checkpoint_dir is None else Path(ctx.checkpoint_dir) / f"advface_generator_eps{cfg.eps:g}.pt"
    key = fingerprint({"generator": {k: getattr(cfg, k) for k in ("eps", "norm", "gen_hidden", "gen_epochs", "gen_lr",
                                                                    "rec_weight", "batch_size", "augment")},
                       "seed": ctx.seed, "shadow": weights_digest(shadow)[:16]})
    saved = load_checkpoint(ckpt) if ckpt is not None else None
    if saved is not None and saved.get("fingerprint") == key:
        generator.load_state_dict(saved["generator"])
        return generator.eval()

    def batch_loss(xb):
        with torch.no_grad():
            tb = clean(xb)
        return generator_loss(generator, frozen, tb, xb, cfg.rec_weight)

    loop = dataclasses.replace(cfg, epochs=cfg.gen_epochs, lr=cfg.gen_lr, weight_decay=0.0)
    fit_reconstructor(generator, x_all[train_rows], batch_loss, loop, torch.Generator().manual_seed(ctx.seed + 1),
                      device, label=f"advface:generator eps {cfg.eps:g}", progress=ctx.progress)
    generator.eval()
    if ckpt is not None:
        save_checkpoint(ckpt, {"fingerprint": key,
                               "generator": {k: v.cpu() for k, v in generator.state_dict().items()}})
    return generator


def _measures(system: AdvFaceSystem, x_hold: torch.Tensor, device) -> dict:
    """Shadow reconstruction of held-out public images from clean vs stored templates, and
    how far the stored templates moved."""
    if len(x_hold) == 0:
        return {}
    clean = batched(system.probe, x_hold, 128, device)
    stored = batched(system, x_hold, 128, device)
    rec_clean = batched(system.shadow, clean, 128, device)
    rec_stored = batched(system.shadow, stored, 128, device)
    s_clean, _ = ssim_psnr(rec_clean, x_hold)
    s_stored, _ = ssim_psnr(rec_stored, x_hold)
    return {
        "shadow_ssim_clean": float(s_clean),
        "shadow_ssim_stored": float(s_stored),
        "shadow_l1_clean": float(_pixel_loss(rec_clean, x_hold).mean()),
        "shadow_l1_stored": float(_pixel_loss(rec_stored, x_hold).mean()),
        "cosine_clean_stored": float(F.cosine_similarity(clean, stored, dim=1).mean()),
        "holdout_images": int(len(x_hold)),
        "mode": system.cfg.mode,
    }


class AdvFaceDefense:
    config_class = AdvFaceConfig   # its params block (params.yaml's schema reads it)
    name = "advface"
    privacy_knob = "eps"


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel(("stored_templates",), ("template_inversion",),
                           "each stored template carries an adversarial perturbation against a shadow decoder: it "
                           "claims that faces cannot be reconstructed from a stolen template database; the FR model "
                           "and what the client sends are untouched")

    def build(self, ctx: DefenseContext) -> AdvFaceSystem:
        cfg = config_from(AdvFaceConfig, ctx.params)
        return self.build_sweep(ctx, [cfg.eps])[0]

    def build_sweep(self, ctx: DefenseContext, values: list) -> list[AdvFaceSystem]:
        """One shadow decoder, one system per eps (offline: one generator per eps)."""
        cfg = config_from(AdvFaceConfig, ctx.params)
        cfg.validate()
        device = torch.device(ctx.device)
        backbone = copy.deepcopy(ctx.baseline.backbone).to(device).eval()
        head = copy.deepcopy(ctx.baseline.head).eval()
        shadow, train_rows, hold_rows = _train_shadow(ctx, cfg, backbone, device)
        x_hold = to_model_tensor(ctx.public_images[hold_rows]) if len(hold_rows) else torch.empty(0)
        systems = []
        for eps in values:
            point = dataclasses.replace(cfg, eps=float(eps))
            point.validate()
            generator = None
            if point.mode == "offline":
                generator = _train_generator(ctx, point, backbone, shadow, train_rows, device)
            system = AdvFaceSystem(copy.deepcopy(backbone), copy.deepcopy(head).to(device), copy.deepcopy(shadow),
                                   ctx.baseline.spec, point, generator=generator).eval()
            system._measures = _measures(system, x_hold, device)
            systems.append(system.cpu())
        return systems

    def rebuild(self, config: dict) -> AdvFaceSystem:
        model = build_fr_model(config["fr_spec"])
        sh = config["shadow"]
        shadow = ShadowDecoder(int(sh["dim"]), tuple(sh["size"]), int(sh["width"]))
        cfg = AdvFaceConfig(**config["advface"])
        generator = None
        if cfg.mode == "offline":
            generator = PerturbationNet(int(sh["dim"]), cfg.eps, cfg.norm, cfg.gen_hidden).eval()
        return AdvFaceSystem(model.backbone.eval(), model.head.eval(), shadow.eval(), config["fr_spec"], cfg,
                             config.get("measures", {}), generator)


DEFENSE = AdvFaceDefense()
