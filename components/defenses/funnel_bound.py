"""The privacy funnel's variational upper bound on the leakage I(S;Z), as a training loss:
what makes dvpf's default objective a bound to minimise rather than a game against
adversaries.

| step | paper (Razeghi et al., DVPF, arXiv 2404.02696) | here |
|---|---|---|
| chain | S -> X -> Z: the encoder reads the features only | the same: GaussianEncoder on the frozen template |
| leakage | I(S;Z) = I(X;Z) - I(X;Z given S) | the same identity (exact under the chain) |
| first term | I(X;Z) <= E KL(q(z; x), prior) | prior N(0, I) |
| second term | I(X;Z given S) >= H(X given S) + E log p(x; s, z) | `ConditionalDecoder`: Gaussian, learned per-dim variance, s as one-hot codes |
| loss | the bound, weighted against utility | `bound_loss` = E KL + E[-log p(x; s, z)], without the constant H(X given S) |
| training | end to end | one optimiser: encoder, head and decoders all minimise (no adversary) |

The paper's equations were not at hand (only its abstract; no official code is stored):
the bound above is derived from the chain, and the weights, prior and decoder form are
ours. The loss is the bound plus the constant H(X|S) (a differential entropy, unknown for
real data), so its value is not the leakage; the number reported as the bound comes from
components.metrics.mixture_information on identities the encoder never saw.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConditionalDecoder", "bound_loss", "gaussian_kl"]


class ConditionalDecoder(nn.Module):
    """p(x | s, z) = N(net(z, one-hot s), diag exp(logvar)) over the baseline feature x
    (normalised and scaled to unit variance per dimension), with one learned log-variance
    per dimension so that the likelihood is a likelihood, not a squared error."""

    def __init__(self, z_dim: int, s_sizes: list[int], hidden: int, dim: int):
        super().__init__()
        if not s_sizes:
            raise ValueError("a conditional decoder needs at least one sensitive column")
        self.s_sizes = [int(k) for k in s_sizes]
        self.net = nn.Sequential(nn.Linear(z_dim + sum(self.s_sizes), hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.logvar = nn.Parameter(torch.zeros(dim))

    def nll(self, z: torch.Tensor, s_codes: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of -log p(x | s, z) in nats (summed over dimensions)."""
        onehots = [F.one_hot(c, k).to(z.dtype) for c, k in zip(s_codes, self.s_sizes)]
        mean = self.net(torch.cat([z, *onehots], dim=1))
        logvar = self.logvar.clamp(-8.0, 8.0)
        per_dim = 0.5 * ((x - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2.0 * math.pi))
        return per_dim.sum(dim=1).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(N(mu, diag exp(logvar)) || N(0, I)) in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def bound_loss(kl: torch.Tensor, decoder: ConditionalDecoder, z: torch.Tensor, s_codes: list[torch.Tensor],
               x: torch.Tensor) -> torch.Tensor:
    """E KL(q(z|x) || N(0, I)) + E[-log p(x|s,z)]: the upper bound on I(S;Z) plus H(X|S)."""
    return kl + decoder.nll(z, s_codes, x)
