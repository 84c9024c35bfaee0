"""Reconstruction attacks (template inversion, representation recovery) and their measures,
on the small real world of conftest.py (32 px, 15 public identities = 120 images, 108 for
attacker training; 120 private test images as targets).

Claims, each of which a broken attack or measure fails:
* SSIM/PSNR use data_range 2 ([-1, 1] images): a copy gives (1, 100 dB cap), a +0.1 shift
  exactly 10 log10(4 / 0.01) dB, noise against faces SSIM < 0.1.
* The SAR threshold sits at FMR = far on the clean impostor pairs, consistent with
  tar_at_far; SAR type 1 of the source images themselves is exactly 1, of noise ~0.
* Representation recovery inverts the identity transform of the baseline (SSIM >= 0.85,
  SAR type 1 >= 0.9), but from a representation that is pure noise, independent of the
  face, it does no better than the public mean face (SSIM <= mean face + 0.03).
* Template inversion of the baseline's stored templates is clearly better than the mean
  face (SSIM >= mean face + 0.05 and SAR type 1 >= 0.05, the mean face has 0), and from
  noise templates again no better than the mean face; the system is left untouched.
* Both results carry exactly the contract keys, finite and in range, the strength keys,
  and a grid of held-out PUBLIC images only.

Attack runs use one torch thread: on two cores shared with other jobs, two OpenMP
threads were measured 10-100x slower than one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from components.attacks.base import NotApplicable
from components.attacks.measures import public_set, reconstruction_grid, target_set
from components.attacks.representation_recovery import ATTACK as RR
from components.attacks.representation_recovery import RecoveryUNet
from components.attacks.template_inversion import ATTACK as TI
from components.defenses.base import ProtectedSystem
from components.metrics.operating_point import positive_rate_at
from components.metrics.reconstruction import evaluation_features, sar, sar_threshold, ssim_psnr

CONTRACT = {"ssim", "psnr_db", "sar_type1", "sar_type2", "sar_ceiling", "advantage", "impostor_pairs"}
STRENGTH = {"attacker_images", "epochs", "lr", "architecture", "parameters", "loss"}
RR_PARAMS = {"epochs": 20}                                   # ~5 s each on one thread
TI_PARAMS = {"epochs": 60}                                   # ~18 s each; at 30 the decoder is still learning


class NoiseSystem(ProtectedSystem):
    """protect returns Gaussian noise of shape (12, H/4, W/4), independent of the input:
    nothing of the face leaves the client, and the template is noise too."""

    defense = "noise"

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 32)

    def protect(self, images):
        n, _, h, w = images.shape
        return torch.randn(n, 12, h // 4, w // 4, device=images.device)

    def embed(self, representation):
        return self.proj(representation.mean(dim=(2, 3)))


class VectorSystem(ProtectedSystem):
    defense = "vector"

    def protect(self, images):
        return images.flatten(1)[:, :16]

    def embed(self, representation):
        return representation


@pytest.fixture(scope="module")
def one_thread(world):
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def targets(world):
    return target_set(world.images, world.manifest, "test")


@pytest.fixture(scope="module")
def mean_face_ssim(world, targets):
    train, _ = public_set(world.images, world.manifest, holdout=0.1, seed=0)
    mean = train.mean(dim=0, keepdim=True).expand_as(targets.images).contiguous()
    return ssim_psnr(mean, targets.images)[0]


@pytest.fixture(scope="module")
def threshold(world, one_thread):
    return sar_threshold(world.evaluation, world.images, world.manifest, far=1e-3)


def _run(attack, world, system, params, tmp_path_factory):
    return attack.run(world.context(system, params, tmp_path=tmp_path_factory.mktemp(attack.name)))


@pytest.fixture(scope="module")
def rr_baseline(world, one_thread, tmp_path_factory):
    return _run(RR, world, world.baseline_system(), RR_PARAMS, tmp_path_factory)


@pytest.fixture(scope="module")
def rr_noise(world, one_thread, tmp_path_factory):
    return _run(RR, world, NoiseSystem(), RR_PARAMS, tmp_path_factory)


@pytest.fixture(scope="module")
def ti_baseline_and_system(world, one_thread, tmp_path_factory):
    system = world.baseline_system()
    return _run(TI, world, system, TI_PARAMS, tmp_path_factory), system


@pytest.fixture(scope="module")
def ti_noise(world, one_thread, tmp_path_factory):
    return _run(TI, world, NoiseSystem(), TI_PARAMS, tmp_path_factory)


# --------------------------------------------------------------------------- measures


def test_ssim_psnr_identical_shifted_and_noise(targets):
    x = targets.images[:16]
    s, p = ssim_psnr(x, x)
    assert s == pytest.approx(1.0, abs=1e-5) and p == pytest.approx(100.0)     # capped, not inf
    y = (x * 0.8).clamp(-0.85, 0.85)
    shifted = y + 0.1                                   # MSE 0.01 -> 10 log10(2^2 / 0.01) dB
    assert ssim_psnr(shifted, y)[1] == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-3)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s, p = ssim_psnr(noise, x)
    assert s < 0.1 and p < 15.0
    with pytest.raises(ValueError):
        ssim_psnr(x[:3], x[:4])


def test_sar_threshold_sits_at_far_on_every_cross_identity_pair(world, threshold):
    part = world.manifest[world.manifest["split"] == "test"].sort_values("index")
    f = evaluation_features(world.evaluation, world.images[part["index"].to_numpy()]).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)          # as the threshold's own computation
    ident = part["identity"].to_numpy()
    a, b = np.triu_indices(len(ident), k=1)
    scores = np.einsum("ij,ij->i", f[a], f[b])
    imp, gen = scores[ident[a] != ident[b]], scores[ident[a] == ident[b]]
    assert len(imp) > 10 * len(world.pairs)          # far more impostors than the 10-fold pairs hold
    # (1e-9: the threshold is one of the impostor scores, computed by a matrix product here
    # and an einsum there; they may differ in the last bit)
    assert np.mean(imp > threshold + 1e-9) <= 1e-3 and -1.0 < threshold < 1.0
    assert np.mean(imp > np.max(imp[imp < threshold])) > 1e-3    # and no lower threshold would do
    for far in (0.02, 0.05, 0.1):
        t = sar_threshold(world.evaluation, world.images, world.manifest, far=far)
        assert np.mean(imp > t) <= far and np.mean(imp >= t) > far - 1.0 / len(imp), far
        # the same operating point as the utility's TAR@FAR
        assert np.mean(gen > t) == pytest.approx(positive_rate_at(gen, imp, far)[0]), far


def test_sar_of_sources_is_one_and_of_noise_is_zero(world, targets, threshold):
    x = targets.images
    others = x[targets.partner]
    s1, s2 = sar(world.evaluation, x, x, others, threshold)
    assert s1 == 1.0                                    # cosine 1 > any threshold < 1
    assert 0.0 <= s2 <= 1.0                             # the evaluation model's own TAR: type 2's ceiling
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    n1, n2 = sar(world.evaluation, noise, x, others, threshold)
    assert n1 <= 0.02 and n2 <= 0.02


def test_target_and_public_sets_respect_the_threat_model(world, targets):
    m = world.manifest.set_index("index")
    assert (m.loc[targets.rows, "split"] == "test").all()
    assert (targets.partner >= 0).all() and (targets.partner != np.arange(len(targets.rows))).all()
    ident = m.loc[targets.rows, "identity"].to_numpy()
    assert (ident[targets.partner] == ident).all()
    train, hold = public_set(world.images, world.manifest, holdout=0.1, seed=0)
    public_rows = world.manifest.loc[world.manifest["split"] == "public", "index"].to_numpy()
    assert len(train) + len(hold) == len(public_rows) and len(hold) == 12
    pub = {world.images[r].tobytes() for r in public_rows}
    as_u8 = lambda t: ((t.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)   # noqa: E731
    assert all(img.tobytes() in pub for img in as_u8(torch.cat([train, hold])))


def test_grid_refuses_private_images(tmp_path, targets):
    x = targets.images[:4]
    with pytest.raises(ValueError, match="public"):
        reconstruction_grid(x, x, tmp_path / "g.png", splits=["public", "test", "public", "public"])
    path = reconstruction_grid(x, x, tmp_path / "g.png", n=8, splits=["public"] * 4)
    w, h = Image.open(path).size
    assert h > w / 4 > 0                                # two rows of four cells


# --------------------------------------------------------------------------- representation recovery


@pytest.mark.parametrize("shape", [(3, 32, 32), (189, 4, 4), (5, 12, 12), (7, 40, 40)])
def test_unet_takes_any_representation_shape(shape):
    net = RecoveryUNet(shape, (32, 32), width=8, depth=3).eval()
    assert net(torch.randn(2, *shape)).shape == (2, 3, 32, 32)


def test_representation_recovery_inverts_the_identity_transform(rr_baseline):
    m = rr_baseline.measures
    assert m["ssim"] >= 0.85, m
    assert m["sar_type1"] >= 0.9, m


def test_representation_recovery_from_pure_noise_is_the_mean_face(rr_noise, mean_face_ssim):
    m = rr_noise.measures
    assert m["ssim"] <= mean_face_ssim + 0.03, (m, mean_face_ssim)
    assert m["sar_type1"] <= 0.05 and m["advantage"] <= 0.1, m     # nothing leaves: no advantage
    assert rr_noise.strength["architecture"].endswith("stem sub-pixel x4)")


def test_representation_recovery_needs_a_spatial_representation(world, one_thread):
    with pytest.raises(NotApplicable):
        RR.run(world.context(VectorSystem(), {"epochs": 1}))
    with pytest.raises(ValueError, match="unknown"):
        RR.run(world.context(world.baseline_system(), {"epoch": 1}))


# --------------------------------------------------------------------------- template inversion


def test_template_inversion_beats_the_mean_face(ti_baseline_and_system, mean_face_ssim):
    result, system = ti_baseline_and_system
    m = result.measures
    assert m["ssim"] >= mean_face_ssim + 0.05, (m, mean_face_ssim)
    assert m["sar_type1"] >= 0.05, m
    assert result.strength["identity_loss_used"] is True
    assert result.artifacts["grid"].is_file()
    # white box, but read-only: the system comes back as it was, without gradients
    assert not system.training
    assert all(p.requires_grad and p.grad is None for p in system.parameters())


def test_template_inversion_of_noise_templates_is_the_mean_face(ti_noise, mean_face_ssim):
    m = ti_noise.measures
    assert m["ssim"] <= mean_face_ssim + 0.03, (m, mean_face_ssim)
    assert m["sar_type1"] <= 0.05 and m["advantage"] <= 0.1, m
    assert ti_noise.strength["identity_loss_used"] is False    # protect(recon) ignores recon


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("which", ["rr_baseline", "rr_noise", "ti_baseline", "ti_noise"])
def test_results_follow_the_contract(which, request, world, threshold):
    if which == "ti_baseline":
        result = request.getfixturevalue("ti_baseline_and_system")[0]
    else:
        result = request.getfixturevalue(which)
    m = result.measures
    assert set(m) == CONTRACT
    assert all(isinstance(v, (float, int)) and math.isfinite(v) for v in m.values()), m
    assert all(0.0 <= m[k] <= 1.0 for k in ("ssim", "sar_type1", "sar_type2", "sar_ceiling", "advantage")), m
    assert m["advantage"] == pytest.approx(min(1.0, m["sar_type2"] / m["sar_ceiling"]))
    assert m["impostor_pairs"] > 10 * len(world.pairs) and isinstance(m["impostor_pairs"], int)
    assert 0.0 < m["psnr_db"] <= 100.0, m
    s = result.strength
    assert STRENGTH <= set(s), s
    n_public = int((world.manifest["split"] == "public").sum())
    assert s["attacker_images"] == n_public - 12                # 10% held out for the grid
    assert s["epochs"] > 0 and s["lr"] > 0 and s["parameters"] > 0 and isinstance(s["architecture"], str)
    assert s["threshold"] == pytest.approx(threshold, abs=1e-6)    # one SAR operating point for all
    assert s["loss"] == ("L1" if which.startswith("rr") else "L1+(1-SSIM)+identity")
    grid = result.artifacts["grid"]
    assert set(result.artifacts) == {"grid"} and grid.suffix == ".png" and Image.open(grid).format == "PNG"
