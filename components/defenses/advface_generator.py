"""AdvFace's offline mode: a perturbation generator trained once, before enrolment.

The online mode crafts each stored template by PGD against the shadow decoder at
enrolment, which needs the enrolled photo and a few backward passes per face. Offline, the
server spends that optimisation ahead of time on its own (public) faces: a small network
G maps a clean template t to a perturbation in the eps ball, trained to raise the shadow's
reconstruction loss while keeping every verification score t'(a) . t(b) what it was
(the recognition term: the perturbed features are fed back into what recognition needs).
At enrolment the server needs only the template: t' = normalize(t + G(t)), one forward
pass, no photo, no gradient.

Why a generator: it is the amortised form of the online objective, and the only way to
keep "no change to the FR network" while reusing the adversarial features for recognition.
The paper's own offline procedure is not described in any text available to this project
(docs/design.md, AdvFace); this is the project's reading, labelled as such in the report.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PerturbationNet", "generator_loss", "score_drift"]


class PerturbationNet(nn.Module):
    """t (N, D) unit templates -> delta (N, D) inside the `norm` ball of radius eps: an MLP
    whose raw output is scaled into the ball (L2) or squashed by tanh (Linf), so the bound
    holds by construction and gradients never vanish at the boundary."""

    def __init__(self, dim: int, eps: float, norm: str = "l2", hidden: int = 256):
        super().__init__()
        if norm not in ("l2", "linf"):
            raise ValueError(f"advface: norm must be 'l2' or 'linf', got {norm!r}")
        self.eps, self.norm = float(eps), norm
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        g = self.net(t)
        if self.norm == "linf":
            return self.eps * torch.tanh(g)
        return g * (self.eps / g.norm(dim=1, keepdim=True).clamp_min(self.eps))


def score_drift(stored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared change of the batch's verification scores: (t' t^T - t t^T)^2."""
    return ((stored @ clean.T - clean @ clean.T) ** 2).mean()


def generator_loss(generator: PerturbationNet, shadow: nn.Module, t: torch.Tensor, x: torch.Tensor,
                   rec_weight: float) -> torch.Tensor:
    """-(shadow's per-image L1 against x) + rec_weight * score drift, for clean templates t
    of public images x; the shadow is used frozen in eval mode."""
    stored = F.normalize(t + generator(t), dim=1)
    attack = (shadow(stored) - x).abs().flatten(1).mean(dim=1).mean()
    return -attack + rec_weight * score_drift(stored, t)
