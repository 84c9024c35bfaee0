"""What a Gaussian encoder's release z ~ q(z|x) tells about an attribute S, in nats: the
numbers the privacy funnel's leakage claim rests on.

Over n samples (x_i, s_i), the released Z is a mixture of the n Gaussians
q(z|x_i) = N(mu_i, diag exp(logvar_i)), and Z given S = s the mixture of that class's
components. Both densities are known, so I(S;Z) = E[ln p(z|s) - ln p(z)] is computed by
drawing z from each component (Monte Carlo over the draws only). Two numbers:

* ``plugin``: I(S;Z) under the empirical law of the samples. Mutual information is convex
  in the channel p(z|s) for fixed p(s), and the empirical mixture is an unbiased estimate
  of the population's p(z|s); so by Jensen the plug-in is, in expectation, an UPPER bound
  on the population leakage of the sampled release (at the sample's class shares). It is
  loose when the components hardly overlap (it then approaches H(S)).
* ``variational``: the funnel's own bound, I(S;Z) = I(X;Z) - I(X;Z|S) <=
  E KL(q(z|x) || N(0, I)) - I(X;Z|S), with the exact class posterior as the decoder
  (the empirical law makes H(X|S) = sum_s p(s) ln n_s exact). Looser by KL(q(z) || N(0, I)).

Both are clipped to [0, H(S)]. Neither says anything of a deterministic function of x such
as the posterior mean: they bound the stochastic release only. Written here: no
maintained library computes mixture information with known component densities.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["component_log_densities", "release_information", "nats_to_bits"]

_CHUNK = 512   # draws per step: a (512, n) matrix of log densities at a time


def nats_to_bits(x: float) -> float:
    return float(x) / math.log(2.0)


def component_log_densities(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(m, n) ln N(z_a; mu_j, diag exp(logvar_j)), by matrix products (no m x n x d array)."""
    inv = torch.exp(-logvar)                                        # (n, d)
    quad = (z ** 2) @ inv.T - 2.0 * z @ (mu * inv).T + (mu ** 2 * inv).sum(1)[None, :]
    return -0.5 * (quad + logvar.sum(1)[None, :] + mu.shape[1] * math.log(2.0 * math.pi))


def release_information(mu, logvar, s, draws: int = 4, seed: int = 0) -> dict:
    """{"plugin_nats", "variational_nats", "entropy_s_nats", "ixz_nats", "ixz_given_s_nats",
    "prior_kl_nats", "samples", "draws"} for the release z ~ N(mu_i, diag exp(logvar_i)) of
    n rows with attribute labels `s` (see the module doc)."""
    mu = torch.as_tensor(np.asarray(mu), dtype=torch.float64)
    logvar = torch.as_tensor(np.asarray(logvar), dtype=torch.float64)
    s = np.asarray(s)
    if mu.ndim != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be (n, d), got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if len(s) != len(mu) or len(mu) < 2:
        raise ValueError(f"need n >= 2 rows with one label each, got {len(mu)} rows and {len(s)} labels")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    n = len(mu)
    values, codes, counts = np.unique(s, return_inverse=True, return_counts=True)
    p = counts / n
    entropy_s = float(-(p * np.log(p)).sum())
    codes_t = torch.as_tensor(codes)
    member = torch.nn.functional.one_hot(codes_t, len(values)).to(torch.float64)   # (n, K)
    log_n_class = torch.as_tensor(np.log(counts), dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    std = torch.exp(0.5 * logvar)
    ixz, ixz_s = 0.0, 0.0
    for _ in range(draws):
        z_all = mu + torch.randn(mu.shape, generator=gen, dtype=torch.float64) * std   # one draw per component
        for a in range(0, n, _CHUNK):
            rows = slice(a, a + _CHUNK)
            logq = component_log_densities(z_all[rows], mu, logvar)                       # (m, n)
            own = logq[torch.arange(logq.shape[0]), torch.arange(a, a + logq.shape[0])]
            ln_pz = torch.logsumexp(logq, dim=1) - math.log(n)
            # ln p(z | s_a): the mixture of the own class's components
            masked = logq + torch.log(member[:, codes_t[rows]].T.clamp_min(1e-300))
            ln_pz_s = torch.logsumexp(masked, dim=1) - log_n_class[codes_t[rows]]
            ixz += float((own - ln_pz).sum())
            ixz_s += float((own - ln_pz_s).sum())
    ixz, ixz_s = ixz / (n * draws), ixz_s / (n * draws)
    prior_kl = float((0.5 * (logvar.exp() + mu ** 2 - 1.0 - logvar).sum(1)).mean())
    clip = lambda v: min(max(v, 0.0), entropy_s)   # noqa: E731
    return {"plugin_nats": clip(ixz - ixz_s), "variational_nats": clip(prior_kl - ixz_s),
            "entropy_s_nats": entropy_s, "ixz_nats": ixz, "ixz_given_s_nats": ixz_s, "prior_kl_nats": prior_kl,
            "samples": n, "draws": int(draws)}
