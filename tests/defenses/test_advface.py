"""AdvFace on the small world (tests/world.py: 32 px, 15 public identities for the shadow,
120 private test images as enrolled targets).

Claims, each of which a broken defense fails:
* The shadow is a decoder of another design than the battery's attacker (transposed convs
  vs upsample+conv) and than the transfer attacker (MLP).
* PGD stays inside the eps ball (L2 and Linf) and raises the shadow's reconstruction loss
  over eps = 0; eps = 0 stores exactly the clean template; for eps > 0 the stored template
  differs from the probe template but stays close; crafting is deterministic, works under
  no_grad and inference_mode, and leaves every parameter, buffer and flag of the system
  as it was.
* Verification (stored vs clean probe templates) stays within a few points of the baseline,
  and twice the budget costs more than those few points.
* The battery's template inversion (upsample+conv decoder, trained on clean probe
  templates) reconstructs the enrolled faces worse from AdvFace's stored templates than
  from the baseline's; so does a second attacker design (MLP decoder): the perturbation
  transfers.
* A saved system rebuilds to identical stored templates; every battery attack runs on it.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from components.attacks import ATTACKS
from components.attacks.template_inversion import ATTACK as TI
from components.attacks.template_inversion import MLPDecoder, TemplateDecoder
from components.data.views import split_attributes, split_view
from components.defenses.advface import AdvFaceDefense, AdvFaceSystem, ShadowDecoder, pgd_delta
from components.defenses.base import DefenseContext, system_bundle
from components.metrics.embeddings import to_model_tensor
from components.metrics.utility import evaluate_system

EPS = 0.5
SHADOW = {"epochs": 15, "width": 8}
TI_PARAMS = {"epochs": 30}
OFFLINE = {"mode": "offline", "gen_epochs": 60, "rec_weight": 1.0}   # ~100 public images: more epochs, and a
                                                                      # weaker score term, than the demo's
VERIFICATION_SLACK = 0.06    # accuracy points AdvFace may cost at EPS on this world's weak baseline


def _context(world, params: dict) -> DefenseContext:
    tx, ty, _ = split_view(world.images, world.manifest, "train")
    px, py, _ = split_view(world.images, world.manifest, "public")
    return DefenseContext(params=params, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                          baseline=world.baseline, train_attributes=split_attributes(world.manifest, "train"),
                          public_attributes=split_attributes(world.manifest, "public"), progress=False, seed=0)


@pytest.fixture(scope="module")
def systems(world, one_thread):
    """eps 0, EPS (L2) and EPS/8 (Linf) from one shadow."""
    sweep = AdvFaceDefense().build_sweep(_context(world, {**SHADOW}), [0.0, EPS, 2 * EPS])
    linf = AdvFaceDefense().build(_context(world, {**SHADOW, "eps": EPS / 8, "norm": "linf"}))
    offline = AdvFaceDefense().build(_context(world, {**SHADOW, **OFFLINE}))
    return {"zero": sweep[0], "l2": sweep[1], "l2_double": sweep[2], "linf": linf, "offline": offline}


@pytest.fixture(scope="module")
def test_images(world):
    rows = world.manifest.loc[world.manifest["split"] == "test", "index"].sort_values().to_numpy()
    return to_model_tensor(world.images[rows[:64]])


def _snapshot(system: nn.Module) -> dict:
    return {"state": {k: v.clone() for k, v in system.state_dict().items()},
            "flags": [p.requires_grad for p in system.parameters()],
            "grads": [p.grad for p in system.parameters()],
            "modes": [m.training for m in system.modules()]}


# --------------------------------------------------------------------------- design


def test_shadow_is_another_design_than_the_attackers():
    shadow, battery, mlp = ShadowDecoder(64, (32, 32)), TemplateDecoder(64, (32, 32)), MLPDecoder(64, (32, 32))
    kinds = lambda net: {type(m) for m in net.modules()}   # noqa: E731
    assert nn.ConvTranspose2d in kinds(shadow) and nn.Upsample not in kinds(shadow)
    assert nn.Upsample in kinds(battery) and nn.ConvTranspose2d not in kinds(battery)
    assert not kinds(mlp) & {nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d}
    assert any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds(shadow))   # the paper's BN shadow
    assert not isinstance(shadow, (TemplateDecoder, MLPDecoder))
    for net in (shadow, battery, mlp):
        assert net.eval()(torch.randn(3, 64)).shape == (3, 3, 32, 32)


def test_unknown_params_are_refused(world):
    with pytest.raises(ValueError, match="epoch"):
        AdvFaceDefense().build(_context(world, {"epoch": 3}))
    with pytest.raises(ValueError, match="norm"):
        AdvFaceDefense().build(_context(world, {"norm": "l1", "epochs": 1}))


# --------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("which,norm", [("l2", 2), ("linf", math.inf)])
def test_pgd_stays_in_the_ball_and_raises_the_shadow_loss(systems, test_images, which, norm):
    system = systems[which]
    eps = system.cfg.eps
    with torch.no_grad():
        t = system.probe(test_images)
        delta = system.perturbation(t, test_images)
        assert delta.norm(p=norm, dim=1).max() <= eps * (1 + 1e-5)
        assert delta.norm(p=norm, dim=1).min() > 0.5 * eps              # the ascent uses its budget
        shadow = system.shadow.eval()
        def loss(d):
            return (shadow(nn.functional.normalize(t + d, dim=1)) - test_images).abs().mean((1, 2, 3))
        before, after = loss(torch.zeros_like(t)), loss(delta)
    assert (after > before).float().mean() >= 0.95, (before.mean(), after.mean())
    assert after.mean() > 1.05 * before.mean(), (before.mean(), after.mean())
    # no budget, no perturbation
    assert torch.equal(pgd_delta(shadow, t, test_images, 0.0, 5, 0.1), torch.zeros_like(t))


def test_eps_zero_stores_the_clean_template(systems, test_images):
    system = systems["zero"]
    with torch.no_grad():
        assert torch.equal(system(test_images), system.probe(test_images))
    assert system.operating_point() == {"mode": "online", "eps": 0.0, "norm": "l2", "steps": 5}


def test_stored_templates_differ_from_probes_but_stay_close(systems, test_images):
    system = systems["l2"]
    with torch.no_grad():
        stored, probe = system(test_images), system.probe(test_images)
    cos = nn.functional.cosine_similarity(stored, probe, dim=1)
    assert torch.allclose(stored.norm(dim=1), torch.ones(len(stored)), atol=1e-5)   # re-normalised
    assert cos.max() < 0.999 and cos.min() > 0.7, (cos.min(), cos.max())
    assert system.has_probe
    m = system.measures()
    assert m["cosine_clean_stored"] == pytest.approx(float(cos.mean()), abs=0.05)
    assert m["shadow_l1_stored"] > m["shadow_l1_clean"] and m["shadow_ssim_stored"] < m["shadow_ssim_clean"]
    zero = systems["zero"].measures()
    assert zero["cosine_clean_stored"] == pytest.approx(1.0, abs=1e-6)
    assert zero["shadow_ssim_clean"] == pytest.approx(m["shadow_ssim_clean"], abs=1e-6)   # one shadow for the sweep


def test_crafting_is_deterministic_and_leaves_the_system_untouched(systems, test_images):
    system = systems["l2"].eval()
    system.shadow.train()                            # even a shadow left in train mode: its BN must not move
    before = _snapshot(system)
    x = test_images[:16].clone().requires_grad_(True)
    stored = system(x)                               # grad mode, parameters requiring grad
    (gx,) = torch.autograd.grad(stored.sum(), [x])   # stays differentiable in x (through t)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
    with torch.no_grad():
        a = system(test_images[:16])
    with torch.inference_mode():
        b = system(test_images[:16])
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, stored.detach(), atol=1e-6)
    after = _snapshot(system)
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())
    assert before["flags"] == after["flags"] and all(after["flags"])
    assert all(g is None for g in after["grads"])     # PGD takes gradients for delta only
    assert before["modes"] == after["modes"] and system.shadow.training
    system.shadow.eval()
    for p in system.parameters():                    # as an attack's `frozen` leaves it
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            c = system(test_images[:16])
        assert torch.allclose(a, c, atol=1e-6)
        assert not any(p.requires_grad for p in system.parameters())
    finally:
        for p in system.parameters():
            p.requires_grad_(True)


# --------------------------------------------------------------------------- offline mode


def test_offline_generator_stays_in_the_ball_and_needs_no_photo(systems, test_images):
    """Offline, a stored template is a function of the template alone (the photo is never
    used, nor the batch it comes in), inside the eps ball, and it raises the shadow's loss
    on private faces the generator never saw."""
    system = systems["offline"].eval()
    with torch.no_grad():
        t = system.probe(test_images)
        delta = system.perturbation(t, None)
        stored = system(test_images)
        assert torch.allclose(stored, nn.functional.normalize(t + delta, dim=1), atol=1e-6)
        one = system(test_images[5:6])
        shadow = system.shadow.eval()
        def loss(d):
            return (shadow(nn.functional.normalize(t + d, dim=1)) - test_images).abs().mean((1, 2, 3))
        before, after = loss(torch.zeros_like(t)), loss(delta)
    assert torch.allclose(one, stored[5:6], atol=1e-5)                       # no batch dependence
    assert delta.norm(dim=1).max() <= EPS * (1 + 1e-5) and delta.norm(dim=1).min() > 0.1 * EPS
    assert (after > before).float().mean() >= 0.9 and after.mean() > 1.05 * before.mean(), (before.mean(),
                                                                                             after.mean())
    m = system.measures()
    assert m["mode"] == "offline" and m["shadow_ssim_stored"] < m["shadow_ssim_clean"]


def test_the_mode_must_match_its_generator(world, systems):
    s = systems["l2"]
    with pytest.raises(ValueError, match="offline"):
        AdvFaceSystem(s.backbone, s.head, s.shadow, s.fr_spec, systems["offline"].cfg)
    with pytest.raises(ValueError, match="mode"):
        AdvFaceDefense().build(_context(world, {"mode": "batch", "epochs": 1}))


# --------------------------------------------------------------------------- utility and attacks


def test_verification_stays_close_to_the_baseline(world, systems):
    """Within VERIFICATION_SLACK of the baseline at EPS (400 pairs: one point is 4 pairs), while
    twice the budget costs more than that slack: the bar tells a usable budget from a ruinous one."""
    base, _ = evaluate_system(world.baseline_system(), world.images, world.manifest, world.pairs)
    accuracy = {}
    for name in ("l2", "l2_double", "offline"):
        system = systems[name]
        adv, st = evaluate_system(system, world.images, world.manifest, world.pairs, probe_fn=system.probe)
        assert st.probe_templates is not None                    # stored vs probe templates
        accuracy[name] = adv["verification_accuracy"]
    floor = base["verification_accuracy"] - VERIFICATION_SLACK
    assert accuracy["l2"] >= floor, (accuracy, base)
    assert accuracy["offline"] >= floor, (accuracy, base)
    assert accuracy["l2_double"] < floor, (accuracy, base)


@pytest.fixture(scope="module")
def inversions(world, systems, one_thread, tmp_path_factory):
    out = {}
    for arch in ("upsample", "mlp"):
        for name, system in (("baseline", world.baseline_system()), ("advface", systems["l2"])):
            ctx = world.context(system, {**TI_PARAMS, "architecture": arch}, defense=name,
                                tmp_path=tmp_path_factory.mktemp(f"ti-{arch}-{name}"))
            out[arch, name] = TI.run(ctx)
    return out


@pytest.mark.parametrize("arch", ["upsample", "mlp"])
def test_template_inversion_reconstructs_worse_from_stored_templates(inversions, arch):
    base, adv = inversions[arch, "baseline"].measures, inversions[arch, "advface"].measures
    assert adv["ssim"] < base["ssim"] - 0.03, (arch, base, adv)
    assert adv["sar_type1"] <= base["sar_type1"], (arch, base, adv)
    arch_text = inversions[arch, "advface"].strength["architecture"]
    assert ("MLP" in arch_text) == (arch == "mlp")


def _round_trip(system):
    buf = io.BytesIO()
    torch.save(system_bundle(system), buf)
    buf.seek(0)
    bundle = torch.load(buf, weights_only=True)
    from components.defenses import get_defense, load_system
    assert get_defense("advface").privacy_knob == "eps"
    return load_system(bundle)


def test_save_load_round_trip_gives_identical_stored_templates(systems, test_images):
    system = systems["l2"].eval()
    loaded = _round_trip(system)
    assert isinstance(loaded, AdvFaceSystem)
    with torch.no_grad():
        assert torch.equal(loaded(test_images), system(test_images))
        assert torch.equal(loaded.probe(test_images), system.probe(test_images))
    assert loaded.operating_point() == system.operating_point() == {"mode": "online", "eps": EPS, "norm": "l2",
                                                                    "steps": 5}
    assert loaded.measures() == system.measures()
    offline = systems["offline"].eval()
    loaded = _round_trip(offline)
    assert loaded.generator is not None
    with torch.no_grad():
        assert torch.equal(loaded(test_images), offline(test_images))
    assert loaded.operating_point()["mode"] == "offline"


def test_the_battery_runs_on_the_system(world, systems, inversions, one_thread, tmp_path):
    system = systems["l2"]
    small = {"representation_recovery": {"epochs": 1}, "model_inversion": {"steps": 5, "targets": 4},
             "membership_inference": {}, "attribute_inference": {"max_iter": 50, "folds": 3}}
    results = {"template_inversion": inversions["upsample", "advface"]}
    for name, params in small.items():
        assert ATTACKS[name].applies_to(system) is None, name
        results[name] = ATTACKS[name].run(world.context(system, params, defense="advface", tmp_path=tmp_path))
    for name, r in results.items():
        flat = [v for m in r.measures.values() for v in (m.values() if isinstance(m, dict) else [m])]
        assert flat and all(np.isfinite(v) for v in flat), (name, r.measures)
    assert set(results["attribute_inference"].measures) == {"sex", "skin", "advantage"}
