"""The defense registry and the baseline system's protocol."""

import numpy as np
import pytest
import torch

from components.defenses import DEFENSES, DefenseContext, get_defense, load_system, system_bundle
from components.models.fr_model import build_fr_model, from_bundle, make_spec, to_bundle


def tiny_baseline():
    torch.manual_seed(0)
    spec = make_spec({"name": "resnet_small", "embedding_dim": 16, "widths": [4, 8, 8, 8]},
                     {"name": "arcface", "s": 16.0, "m": 0.2}, num_classes=5, input_size=16)
    return build_fr_model(spec)


def test_registry_lists_every_design_defense_and_each_loads_its_class():
    assert list(DEFENSES) == ["baseline", "dctdp", "ppfrfd", "hybrid", "facemae", "advface", "dvpf"]
    for name in DEFENSES:
        defense = get_defense(name)
        assert defense.name == name and callable(defense.build) and callable(defense.rebuild)
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        get_defense("nope")


def test_swept_defenses_name_their_knob():
    knobs = {n: get_defense(n).privacy_knob for n in DEFENSES if n != "baseline"}
    assert knobs == {"dctdp": "eps_mean", "ppfrfd": "energy_removed", "hybrid": "alpha", "facemae": "mask_ratio",
                     "advface": "eps", "dvpf": "lam"}


def test_baseline_is_identity_protect_and_unit_templates_and_round_trips():
    model = tiny_baseline()
    ctx = DefenseContext(params={}, train_images=np.zeros((1, 16, 16, 3), np.uint8), train_labels=np.zeros(1),
                         public_images=np.zeros((1, 16, 16, 3), np.uint8), public_labels=np.zeros(1),
                         baseline=model)
    system = get_defense("baseline").build(ctx).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.equal(system.protect(x), x)
    t = system(x)
    assert torch.allclose(t.norm(dim=1), torch.ones(4), atol=1e-5)
    bundle = system_bundle(system)
    restored = load_system(bundle)
    assert torch.allclose(restored(x), t, atol=1e-6)
    torch.manual_seed(1)
    unloaded = get_defense("baseline").rebuild(bundle["config"]).eval()   # same architecture, other weights
    assert not torch.allclose(unloaded(x), t, atol=1e-3)


def test_fr_bundle_round_trips_through_weights_only_load(tmp_path):
    model = tiny_baseline()
    path = tmp_path / "m.pt"
    torch.save(to_bundle(model), path)
    back = from_bundle(torch.load(path, weights_only=True))
    x = torch.rand(2, 3, 16, 16)
    model.backbone.eval()
    assert torch.allclose(back.backbone(x), model.backbone(x))
