"""FaceMAE: train face recognition on masked-autoencoder reconstructions instead of the
private faces.

| step | paper (Wang et al., arXiv 2205.11090) | here |
|---|---|---|
| IRM network | an FR network | `public_fr_backbone` trained on PUBLIC identities only, frozen (irm.py) |
| MAE training | randomly masked faces train the reconstruction module | ViT MAE (mae.py) on public images minus a held-out share, fresh masks and flips per batch |
| loss | instance relation matching (IRM) closes the gap between real and reconstructed faces | `loss: irm` (default): w_instance * instance + w_relation * relation (+ w_pixel * masked MSE, 0 by default); `loss: pixel`: masked MSE alone (the ablation) |
| deployment | reconstruct masked faces of unseen identities, no extra training | each private image masked by its own seeded mask; only masked images leave the owner; reconstructions (uint8) |
| FR training | FR trained on the reconstructions | the baseline's spec and training settings on the reconstructions and nothing else (`fr_train`) |
| leakage | face retrieval between reconstructed and original sets; identities hard to retrieve | `retrieval_leakage`: identity-level top-1 rescaled by chance (`advantage`, scored), image-level top-1/top-5 beside it |

Only the abstract was available (no method section, no public code); one secondary source
says IRM replaces MAE's pixel loss, which is the default here. The IRM terms (irm.py), the
MAE's size and its training from scratch on ~650 public images for a few dozen epochs are
ours (CPU scale; the paper pre-trains on a large face corpus), so the reconstructions are
blurrier. The IRM network is the baseline's ResNet at half width: IRM differentiates
through it on every MAE step. Measured history: docs/experiments.md.

Threat model. FaceMAE protects the TRAINING data, not inference: protect = identity, the
deployed model embeds raw faces like the baseline. The reconstructions (the published
training set) are the leaked artefact; `retrieval_leakage` measures how often they lead
back to their originals' identities, membership inference how much the model still reveals
about who was in the training set. `config()["train_images_sha256"]` is the digest of
exactly the array the FR model trained on.

Knobs (params[facemae], `FaceMAEConfig`): mask_ratio (the privacy knob), patch (None:
image_size // 8), loss and its weights, the MAE's size and training, the two FR trainings,
seed (None: the context's).
"""

from __future__ import annotations

import logging

import copy
import dataclasses
import hashlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.config import config_from
from components.defenses.base import DefenseContext, ProtectedSystem, ThreatModel
from components.defenses.facemae.irm import IRMLoss
from components.defenses.facemae.mae import MaskedAutoencoder
from components.metrics.embeddings import to_model_tensor
from components.models.fr_model import FRModel, build_fr_model, make_spec, train_fr_model
from components.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint, weights_digest
from components.training.loop import TrainConfig

logger = logging.getLogger(__name__)

# The baseline's training settings (params.yaml defaults.baseline.train): the FR model of
# this partition trains exactly like the baseline, only on other images.
BASELINE_TRAIN = {"epochs": 16, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
                  "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1, "seed": 0}
PUBLIC_FR_TRAIN = {"epochs": 10, "batch_size": 64, "lr": 0.1, "warmup_epochs": 1, "seed": 0}
# The IRM feature network: the baseline's ResNet at half width (IRM differentiates through it
# on every MAE step; half width cuts that cost about 3x on CPU).
PUBLIC_FR_BACKBONE = {"name": "resnet_small", "embedding_dim": 128, "widths": [16, 32, 64, 128]}


@dataclass
class FaceMAEConfig:
    mask_ratio: float = 0.75          # share of patches hidden (MAE's and FaceMAE's mask_ratio)
    patch: int | None = None          # patch size in px; None = image_size // 8 (8x8 patches)
    loss: str = "irm"                 # irm: instance relation matching replaces the pixel loss | pixel: MSE only
    w_pixel: float = 0.0              # irm: a masked-pixel term added to IRM (0: none, as in the paper)
    w_instance: float = 1.0
    w_relation: float = 1.0
    dim: int = 128                    # encoder width, depth, heads
    depth: int = 4
    heads: int = 4
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    mlp_ratio: float = 2.0
    mae_epochs: int = 40
    mae_batch_size: int = 64
    mae_lr: float = 2e-3              # AdamW, betas (0.9, 0.95) as in MAE; cosine after warm-up
    mae_weight_decay: float = 0.05
    mae_warmup_epochs: int = 2
    holdout: float = 0.1              # share of public images kept out of MAE training (measures, grid)
    public_fr_backbone: dict = field(default_factory=lambda: dict(PUBLIC_FR_BACKBONE))   # a params backbone block
    public_fr_train: dict = field(default_factory=lambda: dict(PUBLIC_FR_TRAIN))
    fr_train: dict = field(default_factory=lambda: dict(BASELINE_TRAIN))
    recon_batch_size: int = 256
    grid_n: int = 8
    seed: int | None = None

    def __post_init__(self):
        if self.loss not in ("irm", "pixel"):
            raise ValueError(f"facemae: loss must be 'irm' or 'pixel', got {self.loss!r}")
        if min(self.w_pixel, self.w_instance, self.w_relation) < 0:
            raise ValueError("facemae: w_pixel, w_instance and w_relation must be >= 0")
        if self.loss == "irm" and self.w_instance + self.w_relation == 0:
            raise ValueError("facemae: loss irm needs w_instance or w_relation > 0")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"facemae: mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"facemae: holdout must be in (0, 1), got {self.holdout}")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        for name in ("public_fr_train", "fr_train"):
            unknown = sorted(set(getattr(self, name)) - known)
            if unknown:
                raise ValueError(f"facemae: unknown key(s) {unknown} in {name}; known: {sorted(known)}")


def facemae_config(params: dict | None) -> FaceMAEConfig:
    """The config from params[facemae]; unknown keys raise ValueError naming them."""
    return config_from(FaceMAEConfig, {k: v for k, v in (params or {}).items() if k != "sweep"})


# ------------------------------------------------------------------------------------ system


class FaceMAESystem(ProtectedSystem):
    """The FR model trained on reconstructions, plus the MAE and masking seed that made them.

    protect = identity (FaceMAE protects training data, not inference); embed = the backbone
    trained on reconstructions; `head` its training head. `artifacts` (not saved) holds the
    files written at build time, e.g. {"mae_grid": Path}."""

    defense = "facemae"

    def __init__(self, backbone, head, mae: MaskedAutoencoder, fr_spec: dict, mask_seed: int, loss: str,
                 recon_batch_size: int = 256, measures: dict | None = None, train_images_sha256: str = "",
                 params: dict | None = None):
        super().__init__()
        self.backbone, self.head, self.mae = backbone, head, mae
        self.fr_spec, self.mask_seed, self.loss = fr_spec, int(mask_seed), str(loss)
        self.recon_batch_size = int(recon_batch_size)
        self._measures = dict(measures or {})
        self.train_images_sha256 = train_images_sha256
        self.params = dict(params or {})
        self.artifacts: dict[str, Path] = {}

    def embed(self, representation):
        return self.backbone(representation)

    def reconstruct_training(self, images_uint8: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """The reconstructions the FR model trained on, float (N, 3, H, W) in [-1, 1] on the
        uint8 grid. indices: each image's position in the private training set (split_view
        order), which seeds its mask."""
        return to_model_tensor(reconstruct_uint8(self.mae, images_uint8, indices, self.mask_seed,
                                                 self.recon_batch_size))

    def operating_point(self) -> dict:
        return {"mask_ratio": self.mae.mask_ratio, "loss": self.loss}

    def config(self) -> dict:
        return {"fr_spec": self.fr_spec, "mae": self.mae.spec(), "mask_seed": self.mask_seed, "loss": self.loss,
                "recon_batch_size": self.recon_batch_size, "measures": self._measures,
                "train_images_sha256": self.train_images_sha256, "params": self.params}


# ------------------------------------------------------------------------------------ steps


def reconstruct_uint8(mae: MaskedAutoencoder, images_uint8: np.ndarray, indices, seed: int,
                      batch_size: int = 256) -> np.ndarray:
    """x_hat of each image under its own mask (mask_for(index, seed)), as uint8 (N, H, W, 3).
    Fixed-size chunks in the given order, so the same call gives the same bytes."""
    indices = np.asarray(indices).reshape(-1)
    if len(indices) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(indices)} indices")
    device = next(mae.parameters()).device
    was_training = mae.training
    mae.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(indices), batch_size):
                x = to_model_tensor(images_uint8[i:i + batch_size]).to(device)
                x_hat = mae.reconstruct(x, mae.mask_for(indices[i:i + batch_size], seed)).clamp(-1.0, 1.0)
                out.append(((x_hat.permute(0, 2, 3, 1) + 1.0) * 127.5).round().to("cpu", torch.uint8).numpy())
    finally:
        mae.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, *images_uint8.shape[1:]), np.uint8)


def sha256_images(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def train_public_fr(ctx: DefenseContext, cfg: FaceMAEConfig) -> FRModel:
    """Step 1: the IRM feature network, trained on public identities only (`public_fr_backbone`,
    the baseline's head)."""
    head = {"name": ctx.baseline.spec["head"]["name"], **ctx.baseline.spec["head"]["kwargs"]}
    spec = make_spec(cfg.public_fr_backbone, head, int(ctx.public_labels.max()) + 1,
                     input_size=int(ctx.public_images.shape[1]))
    return train_fr_model(ctx.public_images, ctx.public_labels, spec, {**BASELINE_TRAIN, **cfg.public_fr_train},
                          device=ctx.device, checkpoint_dir=_sub(ctx.checkpoint_dir, "public_fr"),
                          on_epoch_end=_prefixed(ctx.on_epoch_end, "public_fr_"), progress=ctx.progress)


def public_split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, held-out positions) of the public images, seeded."""
    n_hold = min(n - 2, max(1, round(holdout * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def train_mae(mae: MaskedAutoencoder, images_uint8: np.ndarray, irm: IRMLoss | None, cfg: FaceMAEConfig,
              seed: int, device="cpu", on_epoch_end=None, progress: bool = False) -> list[dict]:
    """Step 2: MAE training on public images. With `irm` (the IRM loss module; None for the
    pixel ablation): w_instance * instance + w_relation * relation + w_pixel * masked MSE;
    without: the masked MSE alone. The masked MSE is logged either way. Fresh random masks and flips every batch from a generator seeded by `seed`. Returns the
    per-epoch means of each loss term."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = to_model_tensor(images_uint8)
    n = len(x_all)
    bs = max(2, min(cfg.mae_batch_size, n))
    steps = max(1, n // bs)
    mae.to(device).train()
    if irm is not None:
        irm.to(device)
    opt = torch.optim.AdamW(mae.parameters(), lr=cfg.mae_lr, betas=(0.9, 0.95), weight_decay=cfg.mae_weight_decay)
    warm, total = cfg.mae_warmup_epochs * steps, cfg.mae_epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    history = []
    for epoch in range(cfg.mae_epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        sums: dict[str, float] = {}
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            x = torch.where(flips[idx][:, None, None, None], x_all[idx].flip(3), x_all[idx]).to(device)
            mask = mae.random_mask(len(idx), gen).to(device)
            pred = mae(x, mask)
            terms = {"pixel": mae.masked_loss(x, pred, mask)}
            loss = terms["pixel"] if irm is None else cfg.w_pixel * terms["pixel"]
            if irm is not None:
                terms["instance"], terms["relation"] = irm(mae.reconstruct(x, mask, pred), x)
                loss = loss + cfg.w_instance * terms["instance"] + cfg.w_relation * terms["relation"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"facemae: non-finite MAE loss at epoch {epoch + 1}, step {i + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
            opt.step()
            sched.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        metrics = {**{k: v / steps for k, v in sums.items()}, "seconds": time.perf_counter() - t0}
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, {f"mae_{k}": v for k, v in metrics.items()})
        if progress:
            logger.info("[facemae] MAE epoch %d/%d %s", epoch + 1, cfg.mae_epochs,
                        " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    mae.eval()
    return history


def train_on_reconstructions(recon_uint8: np.ndarray, labels: np.ndarray, spec: dict, train: dict,
                             ctx: DefenseContext) -> tuple[FRModel, str]:
    """Step 3: the partition's FR model, trained on `recon_uint8` and nothing else. Returns
    the model and the sha256 of the very array it trained on (the checkpoint folder is named
    by it, so a stale checkpoint of other reconstructions is never resumed)."""
    digest = sha256_images(recon_uint8)
    model = train_fr_model(recon_uint8, labels, spec, train, device=ctx.device,
                           checkpoint_dir=_sub(ctx.checkpoint_dir, f"fr-{digest[:16]}"),
                           on_epoch_end=ctx.on_epoch_end, progress=ctx.progress)
    return model, digest


def heldout_measures(mae: MaskedAutoencoder, irm: IRMLoss, images_uint8: np.ndarray, positions: np.ndarray,
                     seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Measures on held-out PUBLIC images under fixed masks: masked-patch MSE, SSIM/PSNR of
    x_hat against the original, and the IRM instance distance. Also returns (masked, x_hat)."""
    x = to_model_tensor(images_uint8)
    mask = mae.mask_for(positions, seed + 1)
    mae.to("cpu").eval()
    with torch.no_grad():
        pred = mae(x, mask)
        x_hat = mae.reconstruct(x, mask, pred).clamp(-1, 1)
        inst, rel = irm.to("cpu")(x_hat, x)
    from components.metrics.reconstruction import ssim_psnr

    s, p = ssim_psnr(x_hat, x)
    measures = {"mae_masked_loss": float(mae.masked_loss(x, pred, mask)), "heldout_ssim": s,
                "heldout_psnr_db": p, "heldout_instance": float(inst), "heldout_relation": float(rel)}
    return measures, mae.masked_input(x, mask), x_hat


def three_row_grid(rows: list, path: Path, n: int = 8, min_cell: int = 64) -> Path:
    """PNG: masked inputs, reconstructions, originals (float [-1, 1] images), one column
    per image. Callers pass held-out PUBLIC images only."""
    imgs = [((r[:n].clamp(-1, 1).permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8) for r in rows]
    k, h, w, _ = imgs[0].shape
    scale, pad = max(1, math.ceil(min_cell / max(h, w))), 2
    ch, cw = h * scale, w * scale
    grid = np.full((len(imgs) * (ch + pad) + pad, k * (cw + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(imgs):
        for i, img in enumerate(row):
            y, x = pad + r * (ch + pad), pad + i * (cw + pad)
            grid[y:y + ch, x:x + cw] = np.repeat(np.repeat(img, scale, 0), scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------------ defense


class FaceMAEDefense:
    config_class = FaceMAEConfig   # its params block (params.yaml's schema reads it)
    name = "facemae"
    privacy_knob = "mask_ratio"


    def threat_model(self, params: dict) -> ThreatModel:
        return ThreatModel(("training_images",), ("retrieval_leakage", "membership_inference"),
                           "the FR model trains only on MAE reconstructions of masked private faces: it claims that "
                           "the training identities cannot be retrieved from the published training set or read "
                           "back from the model; what leaves the client is the raw face")

    def build(self, ctx: DefenseContext) -> FaceMAESystem:
        cfg = facemae_config(ctx.params)
        t0 = time.perf_counter()
        public_fr = train_public_fr(ctx, cfg)
        return self._build(ctx, cfg, public_fr, time.perf_counter() - t0)

    def build_sweep(self, ctx: DefenseContext, values: list) -> list[FaceMAESystem]:
        """One system per mask ratio; the public FR model (IRM features) is trained once."""
        cfg = facemae_config(ctx.params)
        t0 = time.perf_counter()
        public_fr = train_public_fr(ctx, cfg)
        seconds = time.perf_counter() - t0
        systems = []
        for v in values:
            sub = dataclasses.replace(ctx, params={**ctx.params, "mask_ratio": v},
                                      checkpoint_dir=_sub(ctx.checkpoint_dir, f"mask_ratio={v}"))
            systems.append(self._build(sub, facemae_config(sub.params), public_fr, seconds))
        return systems

    def rebuild(self, config: dict) -> FaceMAESystem:
        model = build_fr_model(config["fr_spec"])
        return FaceMAESystem(model.backbone.eval(), model.head.eval(), MaskedAutoencoder(**config["mae"]).eval(),
                             config["fr_spec"], config["mask_seed"], _saved_loss(config), config["recon_batch_size"],
                             config.get("measures"), config.get("train_images_sha256", ""), config.get("params"))

    def _build(self, ctx: DefenseContext, cfg: FaceMAEConfig, public_fr: FRModel,
               public_fr_seconds: float) -> FaceMAESystem:
        seed = ctx.seed if cfg.seed is None else int(cfg.seed)
        size = int(ctx.train_images.shape[1])
        seconds = {"public_fr": public_fr_seconds}
        torch.manual_seed(seed)
        mae = MaskedAutoencoder(size, cfg.patch or size // 8, cfg.mask_ratio, cfg.dim, cfg.depth, cfg.heads,
                                cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
        irm = IRMLoss(copy.deepcopy(public_fr.backbone))
        fit, hold = public_split(len(ctx.public_images), cfg.holdout, seed)

        t0 = time.perf_counter()
        history = self._fit_mae(ctx, cfg, mae, irm, ctx.public_images[fit], public_fr, seed)
        mae.to("cpu").eval()
        seconds["mae"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        recon = reconstruct_uint8(mae, ctx.train_images, np.arange(len(ctx.train_images)), seed,
                                  cfg.recon_batch_size)
        seconds["reconstruct"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        spec = {**copy.deepcopy(ctx.baseline.spec), "num_classes": int(ctx.train_labels.max()) + 1}
        fr, digest = train_on_reconstructions(recon, ctx.train_labels, spec, _fr_train(ctx), ctx)
        seconds["fr"] = time.perf_counter() - t0

        measures, masked, x_hat = heldout_measures(mae, irm, ctx.public_images[hold], hold, seed)
        measures["mae_final_pixel"] = float(history[-1]["pixel"]) if history else float("nan")
        measures["seconds"] = seconds
        system = FaceMAESystem(fr.backbone.eval(), fr.head.eval(), mae, spec, seed, cfg.loss, cfg.recon_batch_size,
                               measures, digest, dataclasses.asdict(cfg))
        folder = Path(ctx.checkpoint_dir) if ctx.checkpoint_dir is not None else \
            Path(tempfile.mkdtemp(prefix="privface-facemae-"))
        system.artifacts["mae_grid"] = three_row_grid([masked, x_hat, to_model_tensor(ctx.public_images[hold])],
                                                      folder / "facemae_grid.png", n=cfg.grid_n)
        return system.eval()

    @staticmethod
    def _fit_mae(ctx, cfg, mae, irm, images, public_fr, seed) -> list[dict]:
        """train_mae, or its saved result when the checkpoint matches this exact run."""
        fp = fingerprint({"cfg": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "fr_train"},
                          "seed": seed, "mae": mae.spec(), "images": sha256_images(images),
                          "irm_net": weights_digest(public_fr.backbone)})
        path = None if ctx.checkpoint_dir is None else Path(ctx.checkpoint_dir) / "mae.pt"
        saved = load_checkpoint(path) if path is not None else None
        if saved is not None and saved.get("fingerprint") == fp:
            mae.load_state_dict(saved["state"])
            return list(saved["history"])
        history = train_mae(mae, images, irm if cfg.loss == "irm" else None, cfg, seed, ctx.device,
                            on_epoch_end=ctx.on_epoch_end, progress=ctx.progress)
        if path is not None:
            state = {k: v.detach().cpu() for k, v in mae.state_dict().items()}
            save_checkpoint(path, {"fingerprint": fp, "state": state, "history": history})
        return history


def _saved_loss(config: dict) -> str:
    """The loss of a saved system; bundles saved before `loss` existed carry `irm: bool`."""
    if "loss" in config:
        return str(config["loss"])
    return "irm" if config.get("irm", True) else "pixel"


def _sub(folder, name: str):
    return None if folder is None else Path(folder) / name


def _prefixed(callback, prefix: str):
    if callback is None:
        return None
    return lambda epoch, metrics: callback(epoch, {f"{prefix}{k}": v for k, v in metrics.items()})


__all__ = ["FaceMAEConfig", "FaceMAEDefense", "FaceMAESystem", "facemae_config", "reconstruct_uint8",
           "train_mae", "train_on_reconstructions", "train_public_fr"]


def _fr_train(ctx: DefenseContext) -> dict:
    """FR training on the reconstructions: the baseline's settings of the running profile
    (ctx.extra["baseline_train"], set by the pipeline), then params `fr_train` over them."""
    return {**BASELINE_TRAIN, **ctx.extra.get("baseline_train", {}), **(ctx.params or {}).get("fr_train", {})}
