"""Margin heads: the classifier layer that turns embeddings into training logits.

Both heads keep one L2-normalised weight vector per identity, so a logit is s * cos(theta)
between an embedding and a class centre; they differ only in where the margin goes on the
target class. At inference (and for model-inversion attacks) use ``cosine``: no margin,
no scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _NormalisedLinear(nn.Module):
    """Shared part of the margin heads: class centres and the cosine to them."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float):
        super().__init__()
        self.embedding_dim, self.num_classes, self.s, self.m = embedding_dim, num_classes, s, m
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).normal_(0, 0.01))

    def cosine(self, embeddings: Tensor) -> Tensor:
        """cos(theta) between each embedding and each class centre, shape (B, num_classes).

        Computed in float32 even under autocast: margins are small angles and bf16 has a
        ~1e-2 resolution near cos = 1.
        """
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))
        return cos.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, s={self.s}, m={self.m}"


class ArcFace(_NormalisedLinear):
    """Additive angular margin: target logit s * cos(theta + m).

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    cos(theta + m) stops decreasing once theta + m > pi, which would reward pushing the
    embedding *away* from its class; past that point insightface switches to the CosFace-like
    penalty cos(theta) - m * sin(m). ``easy_margin`` instead applies the margin only where
    cos(theta) > 0.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s, m)
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)        # cos(theta) below this means theta + m > pi
        self.mm = math.sin(math.pi - m) * m    # = m * sin(m)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        cos_t = cos.gather(1, labels.view(-1, 1))
        sin_t = (1.0 - cos_t * cos_t).clamp_min(1e-7).sqrt()
        cos_t_m = cos_t * self.cos_m - sin_t * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            target = torch.where(cos_t > 0, cos_t_m, cos_t)
        else:
            target = torch.where(cos_t > self.th, cos_t_m, cos_t - self.mm)
        return self.s * cos.scatter(1, labels.view(-1, 1), target)

    def soft_logits(self, cos: Tensor, weights: Tensor) -> Tensor:
        """Logits from the class cosines `cos` (B, num_classes; `cosine`'s output, which a
        caller often has already) for a soft label `weights` of the same shape, e.g. a MixUp
        of faces: the margin on every class in proportion to its weight, s * cos(theta + w m),
        with the same fallback past theta + w m > pi as `forward`. A one-hot `weights` gives
        `forward`'s logits; a zero weight gives the plain scaled cosine."""
        a = self.m * weights.to(cos.dtype)
        sin = (1.0 - cos * cos).clamp_min(1e-7).sqrt()
        shifted = cos * torch.cos(a) - sin * torch.sin(a)
        return self.s * torch.where(cos > torch.cos(math.pi - a), shifted, cos - a * torch.sin(a))


class CosFace(_NormalisedLinear):
    """Additive cosine margin: target logit s * (cos(theta) - m).

    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_dim, num_classes, s, m)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels.view(-1, 1)) - self.m
        return self.s * cos.scatter(1, labels.view(-1, 1), target)

    def soft_logits(self, cos: Tensor, weights: Tensor) -> Tensor:
        """Logits from the class cosines `cos` for a soft label `weights` (both (B,
        num_classes)): s * (cos(theta) - w m) on every class; a one-hot `weights` gives
        exactly `forward`'s logits."""
        return self.s * (cos - self.m * weights.to(cos.dtype))


HEADS: dict[str, type[_NormalisedLinear]] = {"arcface": ArcFace, "cosface": CosFace}


def get_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a margin head by name (``s``, ``m`` and head-specific options go in kwargs)."""
    try:
        cls = HEADS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(sorted(HEADS))}") from None
    return cls(embedding_dim, num_classes, **kwargs)


__all__ = ["ArcFace", "CosFace", "HEADS", "get_head"]
