"""Instance relation matching (IRM), FaceMAE's identity-preserving loss (Wang et al.,
"FaceMAE: Privacy-Preserving Face Recognition via Masked Autoencoders", 2022).

Pixel loss alone makes a masked autoencoder paint the average face into the hidden
patches. IRM asks instead that a face-recognition network sees the reconstruction x_hat
where it sees the original x:

* instance term  ||f(x_hat) - f(x)||^2, per image, averaged over the batch;
* relation term  ||S(x_hat) - S(x)||^2, S the in-batch cosine-similarity matrix of the
  features (B x B), averaged over its entries, so that reconstructions keep the relations
  between faces (who resembles whom), the structure an FR model trained on them learns from.

f is an FR backbone trained on PUBLIC identities only, frozen (eval mode, no parameter
updates); gradients flow through it to x_hat. Features are L2-normalised (the template
space), which puts the instance term in [0, 4] whatever the backbone's feature scale, and
makes S a matrix of cosines. Targets f(x) carry no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def instance_loss(f_hat: Tensor, f: Tensor) -> Tensor:
    """mean_i ||f_hat_i - f_i||^2 (rows already L2-normalised)."""
    return ((f_hat - f) ** 2).sum(dim=1).mean()


def relation_loss(f_hat: Tensor, f: Tensor) -> Tensor:
    """mean_ij (S(x_hat)_ij - S(x)_ij)^2 with S = F F^T, the cosine-similarity matrix."""
    return ((f_hat @ f_hat.T - f @ f.T) ** 2).mean()


class IRMLoss(nn.Module):
    """IRM terms of a batch through a frozen FR backbone: forward(x_hat, x) -> (instance, relation)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):   # the FR network stays in eval mode (BN running stats)
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        return F.normalize(self.backbone(x), dim=1)

    def forward(self, x_hat: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            f = self.features(x)
        f_hat = self.features(x_hat)
        return instance_loss(f_hat, f), relation_loss(f_hat, f)


__all__ = ["IRMLoss", "instance_loss", "relation_loss"]
