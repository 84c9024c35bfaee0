"""The one training loop: backbone (+ optional front end) + margin head, cross-entropy.

Defenses differ from plain training in small ways (a front end with its own parameters, an
extra loss term, a second optimizer, a batch transform such as MixUp). They subclass
``TrainHooks`` and override only what differs, so every model in the project is trained,
checkpointed, resumed and logged by the same code.

Reproducibility: ``torch.manual_seed(cfg.seed)`` first; then every epoch reseeds torch's
global RNG and draws its shuffle and flips from a generator, both seeded from
(seed, epoch) alone. A run resumed at epoch k therefore sees exactly the batches, flips,
dropout masks and hook randomness (if drawn from torch's RNG) of an uninterrupted run.

Inside a torch.distributed process group (torchrun) the same loop trains data-parallel:
each rank takes its share of every global batch, DDP averages the gradients, BatchNorm
uses global-batch statistics, and only rank 0 shows progress, checkpoints and reports
epochs (see ``distributed.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .checkpoint import CHECKPOINT_NAME, fingerprint, load_checkpoint, save_checkpoint
from .distributed import data_parallel, unwrap


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: Literal["sgd", "adamw"] = "sgd"          # "sgd" | "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step"] = "cosine"        # "cosine" | "step"
    milestones: tuple[int, ...] = ()  # epochs at which "step" multiplies the lr by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0          # linear warm-up, per step, before the schedule
    seed: int = 0
    augment_flip: bool = True       # random horizontal flip
    grad_clip: float | None = 5.0   # max grad norm, per optimizer; None = no clipping
    progress: bool = True
    amp: Literal["auto", "off"] = "auto"               # "auto": bf16 autocast + channels_last only on CUDA; "off"

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}; use 'sgd' or 'adamw'")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}; use 'cosine' or 'step'")
        if self.amp not in ("auto", "off"):
            raise ValueError(f"TrainConfig.amp={self.amp!r}; use 'auto' or 'off'")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig needs epochs >= 1 and batch_size >= 1 (got {self.epochs}, {self.batch_size})")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"TrainConfig.warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs})")


class TrainHooks:
    """What a defense may change. Subclass and override; the base class changes nothing.

    Randomness in hooks should come from torch's global RNG (reseeded every epoch) so that
    resumed runs match uninterrupted ones.
    """

    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers the hook owns (e.g. for a front end). Their parameters are left out of
        the main optimizer; they are stepped (and grad-clipped) with it every step, are not
        scheduled, and are checkpointed."""
        return []

    def transform_batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor | tuple]:
        """Change a batch (x: float NCHW in [-1, 1] on the device). ``y`` may become a tuple
        (y_a, y_b, lam) for MixUp-style mixing, which the default loss understands."""
        return x, y

    def loss(self, model: nn.Module, head: nn.Module, x: Tensor, y) -> Tensor | tuple[Tensor, Tensor] | None:
        """Replace the loss. Return None for the default (cross-entropy of head(model(x), y)),
        a scalar loss, or (loss, scores) where scores (B, classes) give the train accuracy."""
        return None

    def after_step(self, step: int, loss_value: float, batch: tuple) -> dict[str, float]:
        """Extra metrics for this step; averaged over the epoch into the history."""
        return {}

    def config(self) -> dict:
        """Hook settings that define the run (e.g. a MixUp alpha); part of the checkpoint
        fingerprint, so a resume with different settings is refused."""
        return {}

    def state_dict(self) -> dict:
        """Hook state to checkpoint (tensors, numbers, strings, lists, dicts only), including
        the weights of any module the hook trains that is not inside ``model`` or ``head``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch, epochs numbered from 1
    resumed_from: int = 0                              # epochs already done in the checkpoint
    samples_seen: int = 0                              # images this process trained on (its shard when distributed)


_CORE_METRICS = ("epoch", "loss", "train_acc", "lr", "seconds", "images_per_s")
# Not part of the fingerprint: extending a run (more epochs) or hiding the progress bar
# does not change what the finished epochs mean.
_UNFINGERPRINTED = ("epochs", "progress")


def train_classifier(
    model: nn.Module,
    head: nn.Module,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    hooks: TrainHooks | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` (images -> embeddings) and ``head`` (embeddings, labels -> logits).

    images: uint8 (N, H, W, C); batches are converted on the fly to float NCHW in [-1, 1].
    labels: integer (N,). The main optimizer gets every parameter of model and head that
    requires grad and is not owned by one of ``hooks.extra_optimizers()``.

    With ``checkpoint_dir``, ``last.pt`` is written there after every epoch and a later
    call resumes from it (or returns at once if it is complete); a checkpoint written under
    a different config raises ValueError. ``on_epoch_end(epoch, metrics)`` is called after
    each epoch trained by this call. A non-finite loss raises FloatingPointError. Model and
    head are returned in eval mode.

    In a torch.distributed group of several ranks (``distributed.data_parallel()``), every
    rank calls this with the same data and config; each trains on batch_size / world_size
    images per step (batch_size must split evenly) and they end with equal weights; only
    rank 0 writes the checkpoint and calls ``on_epoch_end``. History metrics are global.
    """
    torch.manual_seed(cfg.seed)
    cfg.validate()
    hooks = hooks if hooks is not None else TrainHooks()
    device = torch.device(device)
    images, labels = _as_tensors(images, labels, head)
    use_amp = cfg.amp == "auto" and device.type == "cuda"

    model.to(device)
    head.to(device)
    if use_amp:
        model.to(memory_format=torch.channels_last)
    dp = data_parallel()
    is_main = dp is None or dp.is_main
    fwd_model, fwd_head = dp.wrap(model, head, device) if dp is not None else (model, head)

    extra = list(hooks.extra_optimizers())
    owned = {id(p) for opt in extra for g in opt.param_groups for p in g["params"]}
    params = list({id(p): p for p in [*model.parameters(), *head.parameters()]
                   if p.requires_grad and id(p) not in owned}.values())
    if not params:
        raise ValueError("no trainable parameters left for the main optimizer")
    optimizer = _make_optimizer(cfg, params)
    n = len(labels)
    steps = max(1, n // cfg.batch_size)  # drop the last partial batch (BN dislikes tiny batches)
    gb = min(cfg.batch_size, n)          # global batch: the whole set when it is smaller than one batch
    if dp is not None:
        if gb % dp.world_size:
            raise ValueError(f"batch of {gb} images does not split over world_size={dp.world_size}; "
                             "use a batch_size divisible by it")
        local_b = gb // dp.world_size
        mine = dp.positions(steps * gb)  # this rank's positions of each epoch's permutation
        inside = {id(p) for p in [*model.parameters(), *head.parameters()]}
        outside = [p for p in (q for opt in extra for g in opt.param_groups for q in g["params"])
                   if id(p) not in inside]     # hook-owned parameters DDP does not average
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps))

    fp_payload = _fingerprint_payload(cfg, images, labels, hooks)
    fp = fingerprint(fp_payload)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict] = []
    start_epoch = 0
    ckpt = load_checkpoint(ckpt_path, map_location=device) if ckpt_path is not None else None
    if ckpt is not None:
        _check_resumable(ckpt, ckpt_path, fp, fp_payload, cfg, len(extra))
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for opt, state in zip(extra, ckpt["extra_optimizers"]):
            opt.load_state_dict(state)
        scheduler.load_state_dict(ckpt["scheduler"])
        hooks.load_state_dict(ckpt["hooks"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])

    all_opts = [optimizer, *extra]
    samples_seen = 0
    autocast = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    for epoch in range(start_epoch, cfg.epochs):
        epoch_seed = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(epoch_seed)
        gen = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5 if cfg.augment_flip else None
        model.train()
        head.train()
        loss_sum, correct, scored, seen = 0.0, 0, 0, 0
        hook_sums: dict[str, list[float]] = {}  # name -> [sum, count]
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", file=sys.stderr,
                   disable=not (cfg.progress and is_main), leave=True, dynamic_ncols=True)
        for i in bar:
            step = epoch * steps + i
            sl = slice(i * gb, (i + 1) * gb) if dp is None else mine[i * local_b:(i + 1) * local_b]
            idx = order[sl]
            xb = images[idx.to(images.device)]
            if flips is not None:
                f = flips[sl].to(images.device)
                xb[f] = xb[f].flip(2)
            x = _to_float(xb, device, channels_last=use_amp)
            y = labels[idx].to(device, non_blocking=True)
            x, y = hooks.transform_batch(x, y, step)

            for opt in all_opts:
                opt.zero_grad(set_to_none=True)
            with autocast():
                loss, scores = _compute_loss(hooks, fwd_model, fwd_head, x, y)
            loss_value = float(loss.detach().float().item())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"non-finite loss ({loss_value}) at epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps} "
                    f"(global step {step}); lower the lr or check the inputs")
            loss.backward()
            if dp is not None and outside:
                dp.average_gradients(outside)
            for opt in all_opts:
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in opt.param_groups for p in g["params"] if p.grad is not None], cfg.grad_clip)
                opt.step()
            scheduler.step()

            bsz = x.shape[0]
            seen += bsz
            loss_sum += loss_value * bsz
            if scores is not None:
                y_acc = y[0] if isinstance(y, (tuple, list)) else y
                correct += int((scores.argmax(1) == y_acc).sum().item())
                scored += bsz
            for k, v in hooks.after_step(step, loss_value, (x, y)).items():
                if k in _CORE_METRICS:
                    raise ValueError(f"hook metric {k!r} clashes with a built-in metric {_CORE_METRICS}")
                slot = hook_sums.setdefault(k, [0.0, 0])
                slot[0] += float(v)
                slot[1] += 1
            if cfg.progress and is_main:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / scored:.3f}" if scored else "-",
                                img_s=f"{seen / elapsed:.0f}", refresh=False)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        samples_seen += seen
        if dp is not None:  # epoch sums over the ranks, so the history describes the global batches
            names = sorted(hook_sums)
            totals = dp.sum([loss_sum, correct, scored, seen, *(v for k in names for v in hook_sums[k])], device)
            loss_sum, correct, scored, seen = totals[0], int(totals[1]), int(totals[2]), int(totals[3])
            hook_sums = {k: [totals[4 + 2 * j], totals[5 + 2 * j]] for j, k in enumerate(names)}
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum / seen,
            "train_acc": correct / scored if scored else float("nan"),
            "lr": lr,
            "seconds": seconds,
            "images_per_s": seen / seconds,
            **{k: total / count for k, (total, count) in hook_sums.items()},
        }
        history.append(metrics)
        if ckpt_path is not None and is_main:
            save_checkpoint(ckpt_path, {
                "format": 1,
                "fingerprint": fp,
                "fingerprint_payload": fp_payload,
                "config": _cfg_dict(cfg),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "extra_optimizers": [opt.state_dict() for opt in extra],
                "scheduler": scheduler.state_dict(),
                "history": history,
                "hooks": hooks.state_dict(),
            })
        if dp is not None:
            dp.barrier()  # no rank goes on (or reads the checkpoint) before rank 0 has written it
        if on_epoch_end is not None and is_main:
            on_epoch_end(epoch + 1, dict(metrics))

    model.eval()
    head.eval()
    return TrainResult(history=history, resumed_from=start_epoch, samples_seen=samples_seen)


def _compute_loss(hooks: TrainHooks, model: nn.Module, head: nn.Module, x: Tensor, y) -> tuple[Tensor, Tensor | None]:
    """Hook loss if given, else CE on the margin logits; ``scores`` (for accuracy) are the
    margin-free cosines when the head offers them."""
    out = hooks.loss(model, head, x, y)
    if out is not None:
        return out if isinstance(out, tuple) else (out, None)
    emb = model(x)
    if isinstance(y, (tuple, list)):  # MixUp-style (y_a, y_b, lam)
        y_a, y_b, lam = y
        loss = lam * F.cross_entropy(head(emb, y_a), y_a) + (1 - lam) * F.cross_entropy(head(emb, y_b), y_b)
        logits = None
    else:
        logits = head(emb, y)
        loss = F.cross_entropy(logits, y)
    plain_head = unwrap(head)  # under DDP the head's own methods sit on the wrapped module
    with torch.no_grad():
        scores = plain_head.cosine(emb.detach()) if hasattr(plain_head, "cosine") else logits
    return loss, scores


def _as_tensors(images, labels, head: nn.Module) -> tuple[Tensor, Tensor]:
    if isinstance(images, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (memmaps) are fine: we never write to them
            warnings.simplefilter("ignore", UserWarning)
            images = torch.from_numpy(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C); got {images.dtype} {tuple(images.shape)}")
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be shape ({len(images)},); got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers; got {labels.dtype}")
    labels = labels.long().cpu()
    num_classes = getattr(head, "num_classes", None)
    if len(labels) and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        raise ValueError(f"labels span [{int(labels.min())}, {int(labels.max())}] but the head has "
                         f"{num_classes} classes")
    if len(labels) < 2:
        raise ValueError("need at least 2 training samples (BatchNorm)")
    return images, labels


def _to_float(xb: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] on ``device``."""
    x = xb.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _make_optimizer(cfg: TrainConfig, params: list) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """lr multiplier per optimizer step: linear warm-up, then cosine to 0 or step decay."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in cfg.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return cfg.gamma ** sum(step >= m for m in milestones)

    return factor


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed for one epoch's shuffle, flips and global RNG. Mixed rather than seed + epoch so
    that seed 1 does not replay seed 0's shuffles shifted by one epoch."""
    return (seed * 1_000_003 + epoch) % (2**63)


def _cfg_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["milestones"] = list(d["milestones"])
    return d


def _fingerprint_payload(cfg: TrainConfig, images: Tensor, labels: Tensor, hooks: TrainHooks) -> dict:
    cfg_d = {k: v for k, v in _cfg_dict(cfg).items() if k not in _UNFINGERPRINTED}
    return {
        "config": cfg_d,
        "data": {"images_shape": list(images.shape), "labels": hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16]},
        "hooks": {"class": type(hooks).__qualname__, "config": hooks.config()},
    }


def _check_resumable(ckpt: dict, path: Path, fp: str, payload: dict, cfg: TrainConfig, n_extra: int) -> None:
    if ckpt.get("fingerprint") != fp:
        old = ckpt.get("fingerprint_payload", {})
        diffs = [f"{section}.{k}: {old.get(section, {}).get(k)!r} -> {v!r}"
                 for section in ("config", "data", "hooks") for k, v in payload[section].items()
                 if old.get(section, {}).get(k) != v]
        raise ValueError(f"checkpoint {path} belongs to a different training run (differs in: "
                         f"{'; '.join(diffs) or 'unknown'}); delete it or use another checkpoint_dir")
    done, old_epochs = int(ckpt["epoch"]), int(ckpt["config"]["epochs"])
    if done > cfg.epochs:
        raise ValueError(f"checkpoint {path} has {done} epochs done but epochs={cfg.epochs} was asked for")
    if cfg.schedule == "cosine" and old_epochs != cfg.epochs:
        raise ValueError(f"checkpoint {path} was trained with a cosine schedule over {old_epochs} epochs; "
                         f"resuming with epochs={cfg.epochs} would change its lr curve")
    if len(ckpt["extra_optimizers"]) != n_extra:
        raise ValueError(f"checkpoint {path} has {len(ckpt['extra_optimizers'])} extra optimizer(s); "
                         f"the hooks give {n_extra}")


__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "train_classifier"]
