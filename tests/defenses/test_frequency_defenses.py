"""The frequency-domain defense dctdp on the small real world: each trains,
keeps useful verification, survives a save/load round trip, and does what its paper says
(noise on every forward). ppfrfd: tests/defenses/test_ppfrfd.py; hybrid: tests/defenses/test_hybrid.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.attacks import ATTACKS
from components.defenses import get_defense, sweep_systems
from components.defenses.dctdp import LaplaceBudget
from components.metrics.embeddings import to_model_tensor
from components.metrics.utility import evaluate_system

from tests.world import round_trips


def _ctx(world, params, tmp_path=None):
    return world.defense_context(params, tmp_path)


@pytest.fixture(scope="module")
def systems(world):
    torch.manual_seed(0)
    out = {}
    out["dctdp"] = get_defense("dctdp").build(_ctx(world, {"eps_mean": 20.0, "upsample": 2}))
    return out


def _accuracy(world, system):
    torch.manual_seed(0)
    utility, _ = evaluate_system(system, world.images, world.manifest, world.pairs)
    return utility["verification_accuracy"]


def test_laplace_budget_mean_and_scale():
    lb = LaplaceBudget((4, 2, 2), eps_mean=2.0)
    with torch.no_grad():
        lb.rho.normal_()
        lb.hi.fill_(3.0)
    eps = lb.budgets()
    assert eps.mean().item() == pytest.approx(2.0, rel=1e-5)          # the mean budget is eps_mean
    assert torch.allclose(lb.scales(), 3.0 / eps)                      # b = sensitivity / eps
    x = torch.zeros(20000, 4, 2, 2)
    out = lb(x)
    # Laplace(0, b): mean |noise| = b (mu = 0 here)
    assert torch.allclose(out.abs().mean(0), lb.scales().detach(), rtol=0.08)


def test_tface_mode_has_sensitivity_one_and_no_clip():
    """TFace's mechanism: noise scale 1 / eps_i, the representation passes unclipped, and
    adaptive attackers find no clip to pass straight through."""
    from components.defenses.base import clips_input

    torch.manual_seed(0)
    lb = LaplaceBudget((4, 2, 2), eps_mean=4.0, clipped=False)
    with torch.no_grad():
        lb.rho.normal_()
        lb.hi.fill_(0.5)                                               # a range it must ignore
    assert torch.allclose(lb.scales(), 1.0 / lb.budgets())
    assert not clips_input(lb) and clips_input(LaplaceBudget((1,), 1.0))
    x = torch.full((20000, 4, 2, 2), 250.0)                            # far outside [lo, hi]
    out = lb(x)
    assert torch.allclose(out.mean(0), torch.full((4, 2, 2), 250.0), atol=0.1)   # not clipped to 0.5
    assert torch.allclose((out - 250.0).abs().mean(0), lb.scales().detach(), rtol=0.08)


def test_tface_noise_lr_falls_tenfold_at_its_stages():
    from components.defenses.dctdp import DCTDPFront, _NoiseHooks

    hooks = _NoiseHooks(DCTDPFront(2, (189, 8, 8), 4.0, clipped=False), lr=0.1, stages=(10, 18, 22))
    lrs = {}
    for step in (0, 9, 10, 17, 18, 22, 30):
        hooks.transform_batch(None, None, step)
        lrs[step] = hooks.opt.param_groups[0]["lr"]
    assert lrs == pytest.approx({0: 0.1, 9: 0.1, 10: 0.01, 17: 0.01, 18: 0.001, 22: 1e-4, 30: 1e-4})
    assert hooks.config()["stages"] == [10, 18, 22]
    assert "stages" not in _NoiseHooks(DCTDPFront(2, (189, 8, 8), 4.0), lr=0.01).config()


def test_dctdp_tface_mode_builds_reports_its_budget_and_round_trips(world):
    ctx = _ctx(world, {"mode": "tface", "eps_mean": 4.0, "noise_lr": 0.1, "upsample": 2, "train": {"epochs": 2}})
    system = get_defense("dctdp").build(ctx)
    op = system.operating_point()
    n = 189 * 8 * 8
    assert op["mode"] == "tface" and op["epsilon_total"] == pytest.approx(4.0 * n)
    assert system.measures()["epsilon_total"] == pytest.approx(4.0 * n, rel=1e-4)
    assert not system.front.noise.clips
    again = get_defense("dctdp").rebuild(system.config())
    assert not again.front.noise.clips and again.operating_point() == op
    with pytest.raises(ValueError, match="mode"):
        get_defense("dctdp").build(_ctx(world, {"mode": "paper"}))


def test_dctdp_noise_on_every_forward_and_learned_budget(world, systems):
    s = systems["dctdp"]
    x = to_model_tensor(world.images[:4])
    with torch.no_grad():
        a, b = s.protect(x), s.protect(x)
    assert a.shape[1] == 189                                            # DC channels dropped
    assert not torch.allclose(a, b)                                     # fresh noise at inference
    eps = s.front.noise.budgets().detach()
    assert eps.mean().item() == pytest.approx(20.0, rel=1e-4)
    assert eps.max() / eps.min() > 1.2                                  # training moved the budget (1.0 untrained)
    assert s.measures()["eps_max"] > s.measures()["eps_min"]


def test_dctdp_privacy_falls_with_eps(world):
    """Smaller eps_mean = more noise = lower accuracy (the knob does what it says)."""
    ctx = _ctx(world, {"upsample": 2, "train": {"epochs": 5}})
    low, high = sweep_systems(get_defense("dctdp"), ctx, [0.5, 50.0])
    assert low.front.noise.scales().mean() > 10 * high.front.noise.scales().mean()
    assert _accuracy(world, high) > _accuracy(world, low) + 0.05


@pytest.mark.parametrize("name", ["dctdp"])
def test_utility_and_round_trip(world, systems, name):
    s = systems[name].eval()
    acc = _accuracy(world, s)
    base = _accuracy(world, world.baseline_system())
    assert acc > 0.6, f"{name} verification accuracy {acc:.3f}"       # useful (chance 0.5)
    assert acc > base - 0.2
    round_trips(s, to_model_tensor(world.images[:5]))


@pytest.mark.parametrize("name", ["dctdp"])
def test_battery_runs_on_frequency_systems(world, systems, name, tmp_path):
    s = systems[name]
    rr = ATTACKS["representation_recovery"].run(world.context(s, {"epochs": 2, "width": 8, "depth": 2},
                                                              defense=name, tmp_path=tmp_path))
    assert 0.0 <= rr.measures["ssim"] <= 1.0 and np.isfinite(rr.measures["psnr_db"])
    mi = ATTACKS["model_inversion"].run(world.context(s, {"steps": 5, "targets": 3}, defense=name, tmp_path=tmp_path))
    assert 0.0 <= mi.measures["top1"] <= 1.0
