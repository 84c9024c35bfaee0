"""What the three frequency-domain defenses (dctdp, ppfrfd, hybrid) share: a system whose
client transform is a front end on the block-DCT grid (components.freq) and whose FR
backbone reads that grid, and the training of such a backbone with the shared loop.

The backbone is the baseline's architecture with its stem taking the front end's C channels
at stride 1 (the DCT grid is already 8x coarser than the image, times the upsample u).
Hyper-parameters of FR training default to the baseline's (`train` in params overrides)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from components.defenses.base import DefenseContext, ProtectedSystem
from components.models.fr_model import FRModel, build_fr_model
from components.training.loop import TrainConfig, TrainHooks, train_classifier


class FrequencySystem(ProtectedSystem):
    """protect = front(x) (a frequency-domain representation), embed = backbone on it,
    template = L2-normalised features; `head` is the training head (white-box attacks)."""

    def __init__(self, defense: str, front: nn.Module, backbone: nn.Module, head: nn.Module, cfg: dict):
        super().__init__()
        self.defense = defense
        self.front = front
        self.backbone = backbone
        self.head = head
        self._cfg = cfg

    def protect(self, images: torch.Tensor) -> torch.Tensor:
        return self.front(images)

    def embed(self, representation: torch.Tensor) -> torch.Tensor:
        return self.backbone(representation)

    def operating_point(self) -> dict:
        return dict(self._cfg.get("operating_point", {}))

    def config(self) -> dict:
        return copy.deepcopy(self._cfg)


class _Fronted(nn.Module):
    """front then backbone, so the shared loop trains both as one `model`."""

    def __init__(self, front: nn.Module, backbone: nn.Module):
        super().__init__()
        self.front = front
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.front(x))


def frequency_spec(baseline_spec: dict, in_channels: int, grid: int, backbone: dict | None = None) -> dict:
    """The baseline's FR spec with a stem for `in_channels` at stride 1 on a `grid` input;
    `backbone` overrides backbone kwargs (e.g. widths)."""
    spec = copy.deepcopy(baseline_spec)
    spec["in_channels"] = int(in_channels)
    spec["input_size"] = int(grid)
    kwargs = spec["backbone"]["kwargs"]
    if spec["backbone"]["name"] == "resnet_small":
        kwargs["stem_stride"] = 1
    kwargs.update(backbone or {})
    return spec


def train_config(ctx: DefenseContext, train: dict | None) -> TrainConfig:
    """The defense's FR training settings: `train` over the baseline's own (kept in its
    bundle's spec history is not enough, so params give them; defaults match params.yaml)."""
    base = dict(ctx.extra.get("baseline_train", {}))
    base.update(train or {})
    base.setdefault("seed", ctx.seed)
    base["progress"] = ctx.progress
    return TrainConfig(**base)


def train_frequency_fr(ctx: DefenseContext, front: nn.Module, spec: dict, cfg: TrainConfig,
                       hooks: TrainHooks | None = None, front_in_model: bool = True,
                       checkpoint: str = "fr") -> FRModel:
    """Train a backbone of `spec` (and its head) on the private train split seen through
    `front`. With `front_in_model` the front end is part of the trained model (its own
    parameters, if any, must belong to a hook's optimizer or they train with the backbone);
    otherwise the hooks apply it in `transform_batch`."""
    torch.manual_seed(cfg.seed)
    model = build_fr_model(spec)
    net = _Fronted(front, model.backbone) if front_in_model else model.backbone
    ckpt = None if ctx.checkpoint_dir is None else ctx.checkpoint_dir / checkpoint
    result = train_classifier(net, model.head, ctx.train_images, torch.as_tensor(np.asarray(ctx.train_labels)),
                              cfg, device=ctx.device, checkpoint_dir=ckpt, hooks=hooks,
                              on_epoch_end=ctx.on_epoch_end)
    model.history = result.history
    front.to("cpu")
    model.backbone.to("cpu").eval()
    model.head.to("cpu").eval()
    return model


def representation_grid(front: nn.Module, images: np.ndarray) -> tuple[int, int]:
    """(channels, grid size) of `front` on the given uint8 images."""
    from components.metrics.embeddings import to_model_tensor

    with torch.no_grad():
        out = front(to_model_tensor(images[:2]))
    return int(out.shape[1]), int(out.shape[-1])


__all__ = ["FrequencySystem", "frequency_spec", "representation_grid", "train_config", "train_frequency_fr"]
