"""The leakage numbers of a Gaussian release, on planted distributions whose truth is known:
S uniform on {0, 1}, X | S ~ N(+-a e_1, I_d), the release Z = X + N(0, sigma^2 I), so that
I(S;Z) is that of two Gaussians N(+-a, 1 + sigma^2) on the first axis (numerical integral).

Claims, each of which a broken estimator fails:
* The plug-in covers the truth (an upper bound in expectation) and is close to it where the
  components overlap; the variational bound (prior N(0, I)) lies above the plug-in.
* A fitted probe (logistic regression on held-out samples) measures no more than the bound.
* Independent S gives ~0; a deterministic-looking release (tiny sigma) gives ~H(S); both
  are clipped to [0, H(S)].
* The matrix form of the log densities equals the direct formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from sklearn.linear_model import LogisticRegression

from components.metrics.mixture_information import component_log_densities, release_information


def true_leakage(a: float, sd: float) -> float:
    """I(S;Z) in nats for S uniform on {+-a} means and Z | S ~ N(mean, sd^2)."""
    def integrand(z):
        mix = 0.5 * stats.norm.pdf(z, a, sd) + 0.5 * stats.norm.pdf(z, -a, sd)
        return sum(0.5 * stats.norm.pdf(z, m, sd) * math.log(stats.norm.pdf(z, m, sd) / mix) for m in (a, -a))
    return integrate.quad(integrand, -12 * (a + sd), 12 * (a + sd))[0]


def planted(n: int, a: float, d: int, seed: int):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d))
    x[:, 0] += np.where(s == 1, a, -a)
    return x, s


@pytest.mark.parametrize("a,sigma,d", [(1.0, 1.0, 1), (0.5, 1.0, 1), (1.0, 1.0, 4)])
def test_the_plugin_covers_the_truth_and_the_variational_bound_covers_the_plugin(a, sigma, d):
    x, s = planted(800, a, d, seed=0)
    info = release_information(x, np.full_like(x, 2 * math.log(sigma)), s, draws=4, seed=0)
    truth = true_leakage(a, math.sqrt(1 + sigma ** 2))
    assert info["plugin_nats"] >= truth - 0.02, (info, truth)         # Monte Carlo and sampling slack only
    if d == 1:
        assert info["plugin_nats"] <= truth + 0.05, (info, truth)     # and tight where components overlap
    assert info["variational_nats"] >= info["plugin_nats"] - 1e-9
    assert 0.0 <= info["plugin_nats"] <= info["entropy_s_nats"] <= math.log(2) + 1e-9


def test_a_fitted_probe_measures_no_more_than_the_bound():
    a, sigma = 1.0, 1.0
    x, s = planted(1600, a, 2, seed=1)
    z = x + sigma * np.random.default_rng(2).normal(size=x.shape)         # the release itself
    probe = LogisticRegression().fit(z[:800], s[:800])
    ce = -np.mean(np.log(probe.predict_proba(z[800:])[np.arange(800), s[800:]]))
    measured = max(0.0, math.log(2) - ce)
    info = release_information(x[800:], np.full_like(x[800:], 2 * math.log(sigma)), s[800:], seed=3)
    assert measured > 0.1                                              # the probe does find the attribute
    assert measured <= info["plugin_nats"] + 0.02, (measured, info)


def test_independent_and_near_deterministic_releases():
    x, _ = planted(600, 0.0, 3, seed=4)
    s = np.random.default_rng(5).integers(0, 2, 600)                   # S independent of X
    none = release_information(x, np.zeros_like(x), s, seed=0)
    assert none["plugin_nats"] < 0.03, none
    x, s = planted(300, 3.0, 3, seed=6)
    sharp = release_information(x, np.full_like(x, 2 * math.log(1e-3)), s, seed=0)
    assert sharp["plugin_nats"] == pytest.approx(sharp["entropy_s_nats"], abs=1e-6)


def test_log_densities_match_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    mu, logvar, z = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    direct = torch.stack([torch.distributions.Normal(mu[j], (0.5 * logvar[j]).exp()).log_prob(z).sum(1)
                          for j in range(5)], dim=1)
    assert torch.allclose(component_log_densities(z, mu, logvar), direct, atol=1e-5)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="mu and logvar"):
        release_information(np.zeros((3, 2)), np.zeros((3, 1)), [0, 1, 0])
    with pytest.raises(ValueError, match="one label each"):
        release_information(np.zeros((3, 2)), np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="draws"):
        release_information(np.zeros((3, 2)), np.zeros((3, 2)), [0, 1, 0], draws=0)
