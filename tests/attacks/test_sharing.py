"""Attacker work shared between systems with the same surface (components.attacks.sharing),
on the small real world of conftest.py.

Claims, each of which a broken store or fingerprint fails:
* A second system whose protect and probe are the baseline's (it only alters the stored
  templates, as AdvFace does) reuses the recovery U-Net and the template decoder trained
  against the first one, says so in its strength (`shared_from`), and gets exactly the
  measures a fresh, unshared run gets (recovery) or the fresh run's measures on its own
  stored templates (template inversion).
* A system with a different protect (noise) or a different probe (another FR model) is
  not served the baseline's attacker: its result differs and has no `shared_from`.
* Model inversion reuses the inversions of an identical classifier, bit for bit.
* A different seed, parameters or judge gives another key.
"""

from __future__ import annotations

import pytest
import torch

from components.attacks.model_inversion import ATTACK as MI
from components.attacks.representation_recovery import ATTACK as RR
from components.attacks.sharing import SharedWork, context_digest, fingerprint_images, surface_fingerprint
from components.attacks.template_inversion import ATTACK as TI
from components.defenses.base import ProtectedSystem
from components.models.fr_model import build_fr_model

RR_PARAMS = {"epochs": 3, "width": 8, "depth": 2}
TI_PARAMS = {"epochs": 3, "width": 8}
MI_PARAMS = {"steps": 5, "targets": 6}


class StoredNoiseSystem(ProtectedSystem):
    """The baseline's protect, FR model and probes; stored templates get fixed noise added
    (the shape of AdvFace: only what the server stores changes)."""

    defense = "stored-noise"

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.head = base.head

    def embed(self, representation):
        return self.base.embed(representation)

    def forward(self, images):
        t = self.base(images)
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(t.shape, generator=g).to(t.device)
        return torch.nn.functional.normalize(t + 0.8 * noise, dim=1)

    def probe(self, images):
        return self.base(images)


class NoiseProtect(ProtectedSystem):
    defense = "noise-protect"

    def __init__(self, base):
        super().__init__()
        self.base = base

    def protect(self, images):
        return torch.randn_like(images)

    def embed(self, representation):
        return self.base.embed(representation)


def _ctx(world, system, params, defense, tmp, shared):
    ctx = world.context(system, params, defense=defense, tmp_path=tmp)
    ctx.shared = shared
    return ctx


@pytest.fixture()
def shared(world, tmp_path):
    return SharedWork(tmp_path / "shared", context_digest(world.images, world.manifest, world.pairs,
                                                          world.evaluation))


def test_recovery_reuses_the_unet_of_an_identical_protect(world, one_thread, shared, tmp_path):
    base = world.baseline_system()
    first = RR.run(_ctx(world, base, RR_PARAMS, "baseline", tmp_path / "a", shared))
    assert "shared_from" not in first.strength
    second = RR.run(_ctx(world, StoredNoiseSystem(base), RR_PARAMS, "stored", tmp_path / "b", shared))
    assert second.strength["shared_from"] == "baseline"
    assert len(shared.hits) == 1
    fresh = RR.run(world.context(StoredNoiseSystem(base), RR_PARAMS, tmp_path=tmp_path / "c"))   # no store
    assert "shared_from" not in fresh.strength
    assert second.measures == fresh.measures                  # identical protect: identical result
    noise = RR.run(_ctx(world, NoiseProtect(base), RR_PARAMS, "noise", tmp_path / "d", shared))
    assert "shared_from" not in noise.strength
    assert noise.measures["ssim"] < first.measures["ssim"] - 0.2


def test_template_inversion_reuses_the_decoder_and_measures_own_templates(world, one_thread, shared, tmp_path):
    base = world.baseline_system()
    first = TI.run(_ctx(world, base, TI_PARAMS, "baseline", tmp_path / "a", shared))
    stored = StoredNoiseSystem(base)
    second = TI.run(_ctx(world, stored, TI_PARAMS, "stored", tmp_path / "b", shared))
    assert second.strength["shared_from"] == "baseline"
    fresh = TI.run(world.context(stored, TI_PARAMS, tmp_path=tmp_path / "c"))
    assert second.measures == pytest.approx(fresh.measures, abs=1e-6)
    assert second.measures != first.measures                  # its own (perturbed) stored templates
    other = world.baseline_system()
    other.backbone = build_fr_model(other.fr_spec).backbone.eval()   # another (untrained) FR model: another probe
    third = TI.run(_ctx(world, other, TI_PARAMS, "other", tmp_path / "d", shared))
    assert "shared_from" not in third.strength


def test_model_inversion_reuses_identical_classifier(world, one_thread, shared, tmp_path):
    base = world.baseline_system()
    first = MI.run(_ctx(world, base, MI_PARAMS, "baseline", None, shared))
    second = MI.run(_ctx(world, StoredNoiseSystem(base), MI_PARAMS, "stored", None, shared))
    assert second.strength["shared_from"] == "baseline" and "shared_from" not in first.strength
    assert second.measures == first.measures


def test_context_digest_is_stable_across_loads_and_sees_the_splits(world):
    # each asset loads its own copy of the manifest (object columns): the digest must hash
    # contents, never addresses, or no two assets would ever share
    a = context_digest(world.images, world.manifest, world.pairs, world.evaluation)
    assert a == context_digest(world.images.copy(), world.manifest.copy(deep=True), world.pairs.copy(),
                               world.evaluation)
    moved = world.manifest.copy(deep=True)
    moved.loc[moved.index[0], "split"] = "public" if moved["split"].iloc[0] != "public" else "train"
    assert context_digest(world.images, moved, world.pairs, world.evaluation) != a


def test_keys_differ_with_seed_params_judge_and_surface(world):
    base = world.baseline_system()
    x = fingerprint_images(world.images, world.manifest)
    fp = surface_fingerprint(base.probe, base, x, "cpu")
    assert fp == surface_fingerprint(base.probe, base, x, "cpu")
    assert fp != surface_fingerprint(base.protect, base, x, "cpu")
    a = SharedWork("/nonexistent", "judge-a")
    keys = {a.key("w", {"epochs": 3}, 0, fp), a.key("w", {"epochs": 4}, 0, fp), a.key("w", {"epochs": 3}, 1, fp),
            SharedWork("/nonexistent", "judge-b").key("w", {"epochs": 3}, 0, fp), a.key("v", {"epochs": 3}, 0, fp)}
    assert len(keys) == 5
