"""FaceMAE and its retrieval-leakage attack on the shared test world (tests/world.py:
60 synthetic identities x 8 images at 32 px; train 30 identities = 240 private images,
public 15 identities = 120 images, of which 12 are held out of MAE training).

Claims, each of which a broken method fails:
* masks hide exactly round(mask_ratio * L) patches of every image, and the mask of an
  image depends on (seed, its index) only, not on the batch it comes in;
* the masked-patch loss sees hidden patches only, and falls while the MAE trains;
* IRM terms are exactly zero for x_hat == x, positive otherwise, and their gradient
  reaches x_hat while the frozen FR network gets none;
* the partition's FR model trained on the reconstructions: the digest of the array handed
  to its training is that of `reconstruct_training`, which copies the visible patches
  byte for byte and differs from the originals in the hidden ones;
* retrieval leakage: the attack's bookkeeping is exact on hand-built publishers (originals
  -> top1 1, originals shuffled -> top1 = share of fixed points); FaceMAE's reconstructions
  are retrieved clearly less often than unmasked JPEG copies; not applicable to the
  baseline;
* a save/load round trip reproduces templates and reconstructions exactly;
* the whole attack battery runs on the system.

Its measured figures are in docs/experiments.md ("Test world").
"""

from __future__ import annotations

import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from components.attacks import ATTACKS
from components.attacks.base import NotApplicable
from components.attacks.retrieval_leakage import ATTACK as RETRIEVAL
from components.data.views import split_view
from components.defenses.base import DefenseContext, ProtectedSystem, system_bundle
from components.defenses.facemae import FaceMAEDefense, FaceMAESystem
from components.defenses.facemae.defense import facemae_config, sha256_images, train_mae
from components.defenses.facemae.irm import IRMLoss
from components.defenses.facemae.mae import MaskedAutoencoder
from components.metrics.embeddings import to_model_tensor

# CPU-sized FaceMAE at 32 px: patch 4 (8 x 8 patches, as patch 8 at 64 px), a small MAE.
PARAMS = {
    "patch": 4, "dim": 64, "depth": 2, "heads": 4, "decoder_dim": 32, "decoder_depth": 1,
    "mae_epochs": 30, "mae_batch_size": 36, "mae_lr": 2e-3,
    "public_fr_backbone": {"name": "resnet_small", "embedding_dim": 64, "widths": [16, 32, 64, 64]},
    "public_fr_train": {"epochs": 10, "batch_size": 48},
    "fr_train": {"epochs": 10, "batch_size": 48, "lr": 0.1, "warmup_epochs": 1},
}


def _context(world, params, checkpoint_dir=None) -> DefenseContext:
    tx, ty, _ = split_view(world.images, world.manifest, "train")
    px, py, _ = split_view(world.images, world.manifest, "public")
    return DefenseContext(params=params, train_images=tx, train_labels=ty, public_images=px, public_labels=py,
                          baseline=world.baseline, checkpoint_dir=checkpoint_dir, progress=False, seed=0)


@pytest.fixture(scope="module")
def ctx(world, one_thread, tmp_path_factory):
    return _context(world, PARAMS, tmp_path_factory.mktemp("facemae"))


@pytest.fixture(scope="module")
def system(ctx) -> FaceMAESystem:
    return FaceMAEDefense().build(ctx)


@pytest.fixture(scope="module")
def retrieval(world, system, tmp_path_factory):
    return RETRIEVAL.run(world.context(system, {}, defense="facemae", tmp_path=tmp_path_factory.mktemp("rl")))


# ------------------------------------------------------------------------------------ MAE


@pytest.mark.parametrize("ratio, hidden", [(0.75, 48), (0.5, 32), (0.9, 58)])
def test_masks_hide_the_configured_share_and_are_reproducible_per_image(ratio, hidden):
    mae = MaskedAutoencoder(image_size=32, patch=4, mask_ratio=ratio, dim=32, depth=1, decoder_dim=32,
                            decoder_depth=1)
    masks = mae.mask_for(np.arange(20), seed=3)
    assert masks.shape == (20, 64) and (masks.sum(1) == hidden).all()
    assert torch.equal(masks, mae.mask_for(np.arange(20), seed=3))
    assert torch.equal(masks[[7, 2]], mae.mask_for([7, 2], seed=3))          # any batch, any order
    assert not torch.equal(masks, mae.mask_for(np.arange(20), seed=4))
    assert len({tuple(m.tolist()) for m in masks}) == 20                     # each image its own mask
    fresh = mae.random_mask(50, torch.Generator().manual_seed(0))
    assert (fresh.sum(1) == hidden).all()
    # the masked input keeps exactly the visible patches
    x = torch.rand(20, 3, 32, 32) * 2 - 1
    kept = mae.patchify(mae.masked_input(x, masks)) == mae.patchify(x)
    assert torch.equal(kept.all(-1), ~masks)


def test_masked_loss_sees_hidden_patches_only_and_falls_in_training(world, ctx, one_thread):
    cfg = facemae_config({**PARAMS, "mae_epochs": 12, "loss": "pixel"})
    torch.manual_seed(0)
    mae = MaskedAutoencoder(32, 4, 0.75, cfg.dim, cfg.depth, cfg.heads, cfg.decoder_dim, cfg.decoder_depth)
    x = to_model_tensor(ctx.public_images[:16])
    mask = mae.mask_for(np.arange(16), 0)
    pred = mae(x, mask)
    changed = torch.where(mask[..., None], pred, pred + 5.0)                 # spoil visible patches only
    assert torch.equal(mae.masked_loss(x, pred, mask), mae.masked_loss(x, changed, mask))
    history = train_mae(mae, ctx.public_images, None, cfg, seed=0)
    pixel = [h["pixel"] for h in history]
    assert set(history[0]) == {"pixel", "seconds"}                           # the ablation: no IRM terms
    assert pixel[-1] < 0.5 * pixel[0]
    assert np.mean(pixel[-3:]) < np.mean(pixel[3:6])


# ------------------------------------------------------------------------------------ IRM


def test_irm_terms_are_zero_for_the_original_and_positive_with_gradient_otherwise(world, one_thread):
    net = copy.deepcopy(world.baseline.backbone)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    irm = IRMLoss(net).train()
    assert not irm.backbone.training                                         # BN stays on running stats
    x = to_model_tensor(split_view(world.images, world.manifest, "public")[0][:12])
    inst, rel = irm(x.clone(), x)
    assert float(inst) == 0.0 and float(rel) == 0.0
    x_hat = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    inst, rel = irm(x_hat, x)
    assert float(inst.detach()) > 0 and float(rel.detach()) > 0
    (inst + rel).backward()
    assert x_hat.grad is not None and float(x_hat.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_irm_is_the_default_loss_and_replaces_the_pixel_loss(world, ctx, one_thread):
    """The default trains on the IRM terms alone: they fall during training while the
    masked-pixel error, logged but not trained on, is no objective; the pixel ablation
    trains the pixel error down further than IRM does."""
    cfg = facemae_config({**PARAMS, "mae_epochs": 8})
    assert (cfg.loss, cfg.w_pixel) == ("irm", 0.0) and cfg.w_instance > 0 and cfg.w_relation > 0
    net = copy.deepcopy(world.baseline.backbone)
    runs = {}
    for loss in ("irm", "pixel"):
        torch.manual_seed(0)
        mae = MaskedAutoencoder(32, 4, 0.75, cfg.dim, cfg.depth, cfg.heads, cfg.decoder_dim, cfg.decoder_depth)
        conf = facemae_config({**PARAMS, "mae_epochs": 8, "loss": loss})
        runs[loss] = train_mae(mae, ctx.public_images, IRMLoss(net) if loss == "irm" else None, conf, seed=0)
    irm = runs["irm"]
    assert {"pixel", "instance", "relation"} <= set(irm[0])
    assert irm[-1]["instance"] < 0.8 * irm[0]["instance"], irm
    assert runs["pixel"][-1]["pixel"] < irm[-1]["pixel"], (runs["pixel"][-1], irm[-1])
    with pytest.raises(ValueError, match="loss"):
        facemae_config({"loss": "mse"})
    with pytest.raises(ValueError, match="w_instance"):
        facemae_config({"w_instance": 0.0, "w_relation": 0.0})


# ------------------------------------------------------------------------------------ deployment


def test_fr_model_trained_on_the_reconstructions_only(ctx, system):
    n = len(ctx.train_images)
    recon = system.reconstruct_training(ctx.train_images, np.arange(n))
    recon_u8 = ((recon.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert sha256_images(recon_u8) == system.config()["train_images_sha256"]
    assert sha256_images(ctx.train_images) != system.config()["train_images_sha256"]
    # visible patches are the originals' bytes; hidden ones were generated
    mae = system.mae
    mask = mae.mask_for(np.arange(n), system.mask_seed)
    same = mae.patchify(recon) == mae.patchify(to_model_tensor(ctx.train_images))
    assert same[~mask].all()
    assert (~same[mask].all(-1)).float().mean() > 0.95
    assert system.operating_point() == {"mask_ratio": 0.75, "loss": "irm"}
    # it learnt the private identities from the reconstructions (chance: 1/30)
    with torch.no_grad():
        on_recon = system.logits(recon).argmax(1).numpy() == ctx.train_labels
        on_orig = system.logits(to_model_tensor(ctx.train_images)).argmax(1).numpy() == ctx.train_labels
    print(f"train accuracy on reconstructions {on_recon.mean():.3f}, on originals {on_orig.mean():.3f}")
    assert on_recon.mean() > 0.3
    assert on_recon.mean() > on_orig.mean() + 0.15     # fits its training domain, the reconstructions, best


def test_measures_and_public_only_grid(system, ctx):
    m = system.measures()
    assert {"mae_masked_loss", "heldout_ssim", "heldout_psnr_db"} <= set(m)
    assert 0.0 < m["heldout_ssim"] < 1.0 and m["mae_masked_loss"] > 0
    grid = Image.open(system.artifacts["mae_grid"])
    assert grid.size == (2 + 8 * 66, 2 + 3 * 66)                              # 3 rows x 8 columns of 64 px cells
    json.dumps(system.config())                                               # plain data


def test_sweep_shares_the_public_fr_model_across_mask_ratios(world, one_thread, tmp_path):
    quick = {**PARAMS, "mae_epochs": 2, "public_fr_train": {"epochs": 2, "batch_size": 48},
             "fr_train": {"epochs": 1, "batch_size": 48, "warmup_epochs": 0}}
    systems = FaceMAEDefense().build_sweep(_context(world, quick, tmp_path), [0.5, 0.9])
    assert [s.operating_point()["mask_ratio"] for s in systems] == [0.5, 0.9]
    assert [s.mae.num_masked for s in systems] == [32, 58]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_ratio=0.5", "mask_ratio=0.9", "public_fr"]
    assert not any((tmp_path / f"mask_ratio={v}" / "public_fr").exists() for v in (0.5, 0.9))
    # hiding more of the face leaves less of it in the reconstructions
    assert systems[0].measures()["heldout_ssim"] > systems[1].measures()["heldout_ssim"]


def test_config_refuses_unknown_keys_and_ignores_the_sweep_block():
    with pytest.raises(ValueError, match="mask_ratoi"):
        facemae_config({"mask_ratoi": 0.5})
    with pytest.raises(ValueError, match="epoch"):
        facemae_config({"fr_train": {"epoch": 3}})
    assert facemae_config({"sweep": {"values": [0.5]}, "mask_ratio": 0.6}).mask_ratio == 0.6
    with pytest.raises(ValueError, match="mask_ratio"):
        facemae_config({"mask_ratio": 1.0})


# ------------------------------------------------------------------------------------ retrieval


class Publisher(ProtectedSystem):
    """Publishes the originals, permuted by `perm` (identity: the raw training set)."""

    defense = "publisher"

    def __init__(self, perm):
        super().__init__()
        self.perm = perm

    def embed(self, representation):
        return representation.flatten(1)

    def reconstruct_training(self, images_uint8, indices):
        return to_model_tensor(images_uint8[self.perm])


def test_retrieval_bookkeeping_on_hand_built_publishers(world, one_thread):
    n = int((world.manifest["split"] == "train").sum())
    same = RETRIEVAL.run(world.context(Publisher(np.arange(n)), {}))
    assert same.measures["top1"] == 1.0 and same.measures["top5"] == 1.0
    perm = np.random.default_rng(0).permutation(n)
    perm[:10] = np.arange(10)                                                 # 10 fixed points at least
    shuffled = RETRIEVAL.run(world.context(Publisher(perm), {}))
    assert shuffled.measures["top1"] == pytest.approx(np.mean(perm == np.arange(n)))
    assert shuffled.measures["unmasked_top1"] >= 0.95                          # JPEG copies still lead home
    assert shuffled.strength["originals"] == n


def test_reconstructions_leak_clearly_less_than_unmasked_images(retrieval):
    m = retrieval.measures
    assert set(m) == {"top1", "top5", "unmasked_top1", "identity_top1", "identity_chance", "advantage"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in m.values())
    assert m["identity_chance"] == pytest.approx(1 / 30)         # 30 training identities, 8 images each
    assert m["advantage"] == pytest.approx((m["identity_top1"] - 1 / 30) / (1 - 1 / 30))
    assert m["top1"] <= m["top5"]
    assert m["unmasked_top1"] >= 0.95
    assert m["top1"] <= m["unmasked_top1"] - 0.3
    assert retrieval.strength["judge"] == "evaluation model" and retrieval.strength["originals"] == 180   # 30 x 6


def test_retrieval_does_not_apply_to_the_baseline(world):
    baseline = world.baseline_system()
    assert RETRIEVAL.applies_to(baseline) == "the system publishes no reconstructed training data"
    with pytest.raises(NotApplicable):
        RETRIEVAL.run(world.context(baseline, {}))


# ------------------------------------------------------------------------------------ round trip


def test_save_load_round_trip_reproduces_templates_and_reconstructions(world, ctx, system):
    bundle = system_bundle(system)
    buf = io.BytesIO()
    torch.save(bundle, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    again = FaceMAEDefense().rebuild(loaded["config"])
    again.load_state_dict(loaded["state"])
    again.eval()
    x = to_model_tensor(split_view(world.images, world.manifest, "test")[0])
    with torch.no_grad():
        assert torch.equal(system(x), again(x))
    n = len(ctx.train_images)
    assert torch.equal(system.reconstruct_training(ctx.train_images, np.arange(n)),
                       again.reconstruct_training(ctx.train_images, np.arange(n)))
    assert again.operating_point() == system.operating_point()
    assert again.measures() == system.measures()


# ------------------------------------------------------------------------------------ battery

BATTERY = {"template_inversion": {"epochs": 2}, "representation_recovery": {"epochs": 2},
           "model_inversion": {"steps": 10, "targets": 5}, "membership_inference": {},
           "attribute_inference": {"max_iter": 50, "folds": 3}, "retrieval_leakage": {}}


def test_the_attack_battery_runs_on_the_system(world, system, tmp_path):
    assert set(BATTERY) == set(ATTACKS)
    for name, attack in ATTACKS.items():
        assert attack.applies_to(system) is None, name
        result = attack.run(world.context(system, BATTERY[name], defense="facemae", tmp_path=tmp_path / name))
        flat = [v for v in result.measures.values() if not isinstance(v, dict)] + \
               [w for v in result.measures.values() if isinstance(v, dict) for w in v.values()]
        assert flat and all(math.isfinite(v) for v in flat), name
