"""Template inversion: reconstruct a face from the template the server stores.

Idea. Mai et al., "On the reconstruction of face images from deep face templates" (NbNet,
TPAMI 2019) train a de-convolutional decoder from templates to images and count an attack
successful when an FR system accepts the reconstruction against the source image (type I)
or against another image of the same person (type II). Otroshi Shahreza et al. ("Face
reconstruction from deep facial embeddings using a convolutional neural network", ICIP
2022) train such a decoder with a pixel loss plus an identity loss through the attacked
FR model (white box), which makes reconstructions match the target template.

Variant built here (CPU scale). An upsample+conv generator (nearest-neighbour 2x upsampling
then two 3x3 conv-BN-LeakyReLU per stage, no transposed convs, so no checkerboard
artefacts): a linear layer maps the template (scaled by sqrt(D)) to an 8w x 4 x 4 map, one
stage per doubling up to the image size (three at 32 px, four at 64 px; widths 8w, 4w, 2w,
w, w, ...), a 3x3 conv and tanh give the image in [-1, 1]. Loss
    w_l1 * L1 + w_ssim * (1 - SSIM) + w_id * (1 - cos(T(recon), t)),
T = template(embed(protect(.))) of the attacked system, frozen, differentiated through
(gradients flow to the image only; a stochastic protect draws fresh noise each call; a
protect that does not depend differentiably on its input simply contributes no identity
gradient). Adam with a cosine learning-rate schedule. The public images are augmented
(flip, 2 px shifts, colour jitter) and their templates recomputed on every batch, so each
augmented image is a fresh (template, image) pair. `architecture: mlp` swaps the decoder for
a fully connected one (`MLPDecoder`, no convolution, no BatchNorm), a second attacker design
for transfer tests (a defense tuned against one decoder must also hold against another).

Threat model. The attacker holds the stored templates of the enrolled (test-split,
private) images and white-box access to the deployed system, and trains only on public
identities (split == "public"), templates computed by querying the system as a probe
(`system.probe`: the clean template; it differs from the stored one only for defenses that
alter stored templates, e.g. AdvFace, whose protection is exactly that the attacker's
decoder meets perturbed templates it was not trained on). The adaptive variant
`train_on: stored` (components.attacks.variants) is the attacker who has stolen the
database and enrolled public faces himself: he reads their stored templates (`system(x)`,
perturbed where the defense perturbs them) and trains the decoder on those, with the
identity loss still toward the clean probe template of the face; it applies only where
stored templates differ from probes. ~10% of the
public images are held out of training and drawn, with their reconstructions, in the
grid artifact; private faces are only targets and never drawn. Measures: SSIM/PSNR of the
decoded stored templates against their sources, and SAR type 1/2 judged by the
independent evaluation model at FMR = 1e-3 on the clean test pairs (measures.py).

Shared work. The trained decoder depends on the system's `probe` surface only; with
`ctx.shared` (components.attacks.sharing) it is trained once for all systems whose `probe`
is the same function (e.g. the baseline and AdvFace) and the reuse is recorded in the
strength (`shared_from`); the measures are always taken on each system's own outputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

from components.attacks.base import AttackContext, AttackResult
from components.attacks.sharing import fingerprint_images, surface_fingerprint
from components.attacks.measures import (batched, config_from, effective_batch, fit_or_share, frozen,
                                         reconstruction_data, reconstruction_result)
from components.defenses.base import ProtectedSystem
from components.metrics.reconstruction import DATA_RANGE


@dataclass
class TemplateInversionConfig:
    epochs: int = 30
    lr: float = 2e-3
    batch_size: int = 16
    w_l1: float = 1.0
    w_ssim: float = 1.0
    w_id: float = 1.0
    width: int = 16           # channels of the last stage; earlier stages have 2x, 4x, 8x
    seed: int | None = None   # None: the context's seed
    holdout: float = 0.1      # share of public images kept out of training, drawn in the grid
    augment: bool = True
    far: float = 1e-3         # FMR of the SAR threshold
    grid_n: int = 8
    weight_decay: float = 0.0
    refine_steps: int = 0     # per-target refinement of the decoder's input code (white box); 0 = off
    refine_lr: float = 0.05
    architecture: Literal["upsample", "mlp"] = "upsample"  # the decoder design: upsample (TemplateDecoder) | mlp (MLPDecoder)
    train_on: Literal["probe", "stored"] = "probe"   # the templates the decoder learns from (see the docstring)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True),
    )


class TemplateDecoder(nn.Module):
    """Template (N, D) -> image (N, 3, H, W) in [-1, 1]: linear to 4x4, upsample+conv stages."""

    def __init__(self, dim: int, size: tuple[int, int], width: int = 32):
        super().__init__()
        h, w = size
        self.size = (int(h), int(w))
        self.scale = math.sqrt(dim)
        stages = max(1, math.ceil(math.log2(max(h, w) / 4)))
        chans = [width * min(8, 2 ** (stages - i)) for i in range(stages + 1)]
        self.c0 = chans[0]
        self.fc = nn.Sequential(nn.Linear(dim, chans[0] * 16), nn.BatchNorm1d(chans[0] * 16),
                                nn.LeakyReLU(0.2, inplace=True))
        self.stages = nn.Sequential(*[_block(chans[i], chans[i + 1]) for i in range(stages)])
        self.out = nn.Conv2d(chans[-1], 3, 3, padding=1)
        self.architecture = (f"upsample+conv decoder: linear {dim}->{chans[0]}x4x4, "
                             f"{stages} x [nearest 2x, 2 conv3x3-BN-LReLU] {chans[1:]}, conv3x3, tanh")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = self.fc(t * self.scale).view(t.shape[0], self.c0, 4, 4)
        x = self.out(self.stages(x))
        if x.shape[-2:] != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.tanh(x)


class MLPDecoder(nn.Module):
    """Template (N, D) -> image (N, 3, H, W) in [-1, 1]: a fully connected decoder (two
    hidden LeakyReLU layers of 32w units, no convolution, no BatchNorm). A second attacker
    design, for transfer tests of defenses tuned against a conv decoder (e.g. AdvFace)."""

    def __init__(self, dim: int, size: tuple[int, int], width: int = 16):
        super().__init__()
        h, w = size
        self.size = (int(h), int(w))
        self.scale = math.sqrt(dim)
        hidden = 32 * width
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(hidden, 3 * self.size[0] * self.size[1]))
        self.architecture = f"MLP decoder: {dim}->{hidden}->{hidden}->3x{h}x{w}, LeakyReLU, tanh"

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(t * self.scale).view(t.shape[0], 3, *self.size))


DECODERS = {"upsample": TemplateDecoder, "mlp": MLPDecoder}


def make_decoder(architecture: str, dim: int, size: tuple[int, int], width: int) -> nn.Module:
    if architecture not in DECODERS:
        raise ValueError(f"template_inversion: unknown architecture {architecture!r}; known: {sorted(DECODERS)}")
    return DECODERS[architecture](dim, size, width)


def refine(decoder: "TemplateDecoder", system: ProtectedSystem, stored: torch.Tensor, steps: int, lr: float,
           device, batch_size: int = 128) -> torch.Tensor:
    """Per-target refinement (white box): starting from the stored template itself, Adam
    on the decoder's input code so that the attacked system's probe template of the decoded
    image matches the stored template (cosine). The decoder stays fixed (eval mode) and the
    image stays on its output manifold, which is what makes the gain transfer to another FR
    model, unlike optimising pixels directly. Returns the refined images (CPU)."""
    out = []
    decoder.eval()
    for i in range(0, stored.shape[0], batch_size):
        t = stored[i:i + batch_size].to(device)
        code = t.clone().requires_grad_(True)
        opt = torch.optim.Adam([code], lr=lr)
        for _ in range(steps):
            loss = (1 - F.cosine_similarity(system.probe(decoder(code)), t, dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(decoder(code).cpu())
    return torch.cat(out)


def stores_other_templates(system: ProtectedSystem, images, manifest, device) -> bool:
    """Whether the system's stored templates differ from its probes (on the fixed public
    batch of components.attacks.sharing), i.e. whether the database holds transformed
    templates (AdvFace)."""
    if not system.has_probe:
        return False
    batch = fingerprint_images(images, manifest)
    stored = surface_fingerprint(system, system, batch, device)
    return stored != surface_fingerprint(system.probe, system, batch, device)


def _identity_loss(system: ProtectedSystem, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    t = system.probe(recon)
    if not t.requires_grad:          # protect does not depend (differentiably) on the image
        return None
    return (1 - F.cosine_similarity(t, target, dim=1)).mean()


class TemplateInversion:
    config_class = TemplateInversionConfig   # its params block (params.yaml's schema reads it)
    name = "template_inversion"
    tie_break = "ssim"   # between variants of equal advantage (components.attacks.variants)

    def applies_to(self, system: ProtectedSystem) -> str | None:
        return None                  # every system stores templates

    def variant_applies(self, ctx: AttackContext, params: dict) -> str | None:
        """A decoder trained on stored templates differs from the plain one only where the
        stored templates are not the probes (components.attacks.variants)."""
        if params.get("train_on", "probe") != "stored":
            return None
        if not stores_other_templates(ctx.system, ctx.images, ctx.manifest, torch.device(ctx.device)):
            return "the stored templates are the probe templates: the plain attack"
        return None

    def run(self, ctx: AttackContext) -> AttackResult:
        cfg = config_from(TemplateInversionConfig, ctx.params)
        device = torch.device(ctx.device)
        start = time.perf_counter()
        data = reconstruction_data(ctx, cfg)
        train_x, hold_x, targets, gen = data.train_x, data.hold_x, data.targets, data.gen
        size = data.size
        bs = effective_batch(cfg, train_x.shape[0])

        with frozen(ctx.system, device) as system:
            dim = batched(system, train_x[:2], 2, device).shape[1]
            decoder = make_decoder(cfg.architecture, dim, size, cfg.width).to(device)
            id_used = False

            stored_on = cfg.train_on == "stored"
            source = system if stored_on else system.probe   # system(x) is the stored template

            def batch_loss(xb):
                nonlocal id_used
                with torch.no_grad():
                    tb = source(xb)
                    target = system.probe(xb) if stored_on else tb   # the clean template of xb
                recon = decoder(tb)
                loss = cfg.w_l1 * F.l1_loss(recon, xb)
                if cfg.w_ssim:
                    loss = loss + cfg.w_ssim * (1 - ssim_fn(recon, xb, data_range=DATA_RANGE))
                if cfg.w_id:
                    lid = _identity_loss(system, recon, target)
                    if lid is not None:
                        loss = loss + cfg.w_id * lid
                        id_used = True
                return loss

            # the decoder depends on the probe surface only: trained once for systems sharing it
            history, extras, shared_from = fit_or_share(ctx, "template_inversion/decoder", cfg, source,
                                                        system, decoder, train_x, batch_loss, gen, device,
                                                        extras=lambda: {"identity_loss_used": id_used})
            id_used = extras["identity_loss_used"]
            stored = batched(system, targets.images, 64, device)          # the enrolled templates
            recons = (refine(decoder, system, stored, cfg.refine_steps, cfg.refine_lr, device)
                      if cfg.refine_steps > 0 else batched(decoder, stored, 64, device))
            grid_recons = batched(lambda x: decoder(system(x)), hold_x, 64, device) if len(hold_x) else None

        measures, threshold, artifacts, replicates = reconstruction_result(ctx, cfg, "template_inversion", data,
                                                                           recons, grid_recons)
        strength = {
            "attacker_images": int(train_x.shape[0]),
            "epochs": int(cfg.epochs),
            "lr": float(cfg.lr),
            "batch_size": int(bs),
            "architecture": (f"upsample+conv decoder (width {cfg.width}, {len(decoder.stages)} stages)"
                             if cfg.architecture == "upsample" else decoder.architecture),
            "parameters": int(sum(p.numel() for p in decoder.parameters())),
            "loss": "L1+(1-SSIM)+identity",
            "trained_on": "stored templates of enrolled public faces" if stored_on else "probe templates",
            "loss_weights": {"l1": cfg.w_l1, "ssim": cfg.w_ssim, "identity": cfg.w_id},
            "identity_loss_used": bool(id_used),
            "augment": bool(cfg.augment),
            "threshold": float(threshold),
            "targets": int(len(targets.rows)),
            "seconds": round(time.perf_counter() - start, 2),
            "final_loss": float(history[-1]) if history else float("nan"),
        }
        if shared_from is not None:   # the same decoder, trained once against an identical probe
            strength["shared_from"] = shared_from
        return AttackResult(measures=measures, strength=strength, artifacts=artifacts, replicates=replicates)


ATTACK = TemplateInversion()

__all__ = ["ATTACK", "DECODERS", "MLPDecoder", "TemplateInversion", "TemplateInversionConfig", "TemplateDecoder"]
