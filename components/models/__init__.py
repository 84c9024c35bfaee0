"""Face-recognition models: backbones (image -> embedding) and margin heads (embedding ->
training logits).

Adding a backbone: write its file here, give it a builder with the signature
``(in_channels, embedding_dim, input_size, **kwargs) -> nn.Module``, and add one line to
``BACKBONES``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .backbones import ResNetSmall, resnet_small
from .heads import HEADS, ArcFace, CosFace, get_head
from .iresnet import IResNet, iresnet18, iresnet50

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet_small": resnet_small,
    "iresnet18": iresnet18,
    "iresnet50": iresnet50,
}


def get_backbone(name: str, in_channels: int = 3, embedding_dim: int = 128, input_size: int = 64,
                 **kwargs) -> nn.Module:
    """Build a backbone by name. ``input_size`` matters only to backbones whose fc layer
    sees a flattened feature map (IResNet); others ignore it."""
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}") from None
    return builder(in_channels=in_channels, embedding_dim=embedding_dim, input_size=input_size, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters, trainable or not (``parameters()`` yields shared ones once)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BACKBONES", "HEADS", "ArcFace", "CosFace", "IResNet", "ResNetSmall",
    "count_parameters", "get_backbone", "get_head", "iresnet18", "iresnet50", "resnet_small",
]
