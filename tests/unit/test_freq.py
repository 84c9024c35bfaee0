"""Block-DCT front end: exact inverses, agreement with scipy's orthonormal DCT, the channel layout
(c*64 + i*8 + j, DC first), energy preservation, shape errors and gradients."""

import numpy as np
import pytest
import torch
from scipy.fft import dct, dctn

from components.freq import (
    DC_CHANNELS,
    BlockDCT,
    block_dct,
    block_idct,
    channel_energy,
    dct_matrix,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)


def _images(n=2, h=32, w=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g, dtype=dtype) * 2 - 1


# ----------------------------------------------------------------------------- transforms and inverses


def test_dct_matrix_is_orthonormal_and_matches_scipy():
    for n in (4, 8):
        d = dct_matrix(n, dtype=torch.float64)
        torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
        ref = dct(np.eye(n), norm="ortho", axis=0)  # column m = DCT of e_m = D[:, m]
        np.testing.assert_allclose(d.numpy(), ref, atol=1e-12)


def test_colour_transform_round_trip_and_jpeg_units():
    x = _images(seed=1, dtype=torch.float64)
    y = rgb_to_ycbcr(x)
    torch.testing.assert_close(ycbcr_to_rgb(y), x, rtol=0, atol=1e-12)
    assert y.abs().max() <= 128.0
    # white -> Y = 255 - 128, black -> Y = -128, greys carry no chroma
    grey = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 3, 1, 1)
    yg = rgb_to_ycbcr(grey)[:, :, 0, 0]
    torch.testing.assert_close(yg[:, 0], torch.tensor([127.0, -128.0, -0.5], dtype=torch.float64))
    torch.testing.assert_close(yg[:, 1:], torch.zeros(3, 2, dtype=torch.float64), rtol=0, atol=1e-9)
    # pure red follows the JFIF matrix: Y = 0.299*255, Cr = 0.5*255 (both minus 128 after the offset)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(
        rgb_to_ycbcr(red).flatten(), torch.tensor([0.299 * 255 - 128, -0.168736 * 255, 0.5 * 255]), atol=1e-3, rtol=0
    )


def test_block_idct_inverts_block_dct_on_random_tensors():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(3, 5, 16, 40, generator=g) * 100
    coeffs = block_dct(y)
    assert coeffs.shape == (3, 5 * 64, 2, 5)
    torch.testing.assert_close(block_idct(coeffs), y, rtol=0, atol=1e-3)  # float32 at |y| ~ 100
    c = torch.randn(2, 3 * 16, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(block_dct(block_idct(c, block=4), block=4), c, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_inverse_of_forward_reproduces_images(dtype, atol):
    x = _images(n=4, h=32, w=48, seed=3, dtype=dtype)
    fe = BlockDCT().to(dtype)
    coeffs = fe(x)
    assert coeffs.dtype == dtype
    torch.testing.assert_close(fe.inverse(coeffs), x, rtol=0, atol=atol)


# ----------------------------------------------------------------------------- what the coefficients are


def test_agrees_with_scipy_dctn_on_blocks_at_several_positions():
    x = _images(n=2, h=32, w=40, seed=4, dtype=torch.float64)
    y = rgb_to_ycbcr(x).numpy()
    coeffs = BlockDCT().to(torch.float64)(x).numpy()
    rng = np.random.default_rng(4)
    positions = [(0, 0), (3, 4), (0, 4), (3, 0)] + [tuple(rng.integers(0, (4, 5))) for _ in range(4)]
    for n in range(2):
        for p, q in positions:
            for c in range(3):
                ref = dctn(y[n, c, 8 * p : 8 * p + 8, 8 * q : 8 * q + 8], norm="ortho")
                got = coeffs[n, c * 64 : (c + 1) * 64, p, q].reshape(8, 8)
                np.testing.assert_allclose(got, ref, atol=1e-10)


def test_dc_channel_is_block_mean_times_eight():
    x = _images(n=2, seed=5, dtype=torch.float64)
    y = rgb_to_ycbcr(x)
    coeffs = BlockDCT().to(torch.float64)(x)
    block_means = torch.nn.functional.avg_pool2d(y, 8)  # (N, 3, H/8, W/8)
    for c, ch in enumerate(DC_CHANNELS):
        torch.testing.assert_close(coeffs[:, ch], 8 * block_means[:, c], rtol=0, atol=1e-10)


def test_single_cosine_pattern_lands_in_its_channel():
    """A DCT basis pattern (row frequency i, column frequency j) in block (p, q) of colour c
    gives one nonzero coefficient: channel c*64 + i*8 + j at grid position (p, q)."""
    d = dct_matrix(8, dtype=torch.float64)
    for c, i, j, p, q in [(0, 0, 1, 0, 0), (1, 3, 0, 1, 2), (2, 5, 7, 2, 1), (0, 7, 2, 2, 2)]:
        y = torch.zeros(1, 3, 24, 24, dtype=torch.float64)
        y[0, c, 8 * p : 8 * p + 8, 8 * q : 8 * q + 8] = 50 * torch.outer(d[i], d[j])
        coeffs = block_dct(y)
        expected = torch.zeros_like(coeffs)
        expected[0, c * 64 + i * 8 + j, p, q] = 50
        torch.testing.assert_close(coeffs, expected, rtol=0, atol=1e-10)


def test_parseval_energy_per_image_and_channel_energy_shares():
    x = _images(n=3, seed=6, dtype=torch.float64)
    y = rgb_to_ycbcr(x)
    coeffs = BlockDCT().to(torch.float64)(x)
    torch.testing.assert_close(coeffs.pow(2).sum(dim=(1, 2, 3)), y.pow(2).sum(dim=(1, 2, 3)))
    energy = channel_energy(coeffs)
    assert energy.shape == (192,)
    grid = coeffs.shape[-2] * coeffs.shape[-1]
    torch.testing.assert_close(energy.sum() * grid * 3, y.pow(2).sum())  # mean over N and grid
    # smooth images put most of their energy in the DC channels
    smooth = torch.nn.functional.interpolate(_images(n=3, h=2, w=2, seed=7), size=(32, 32), mode="bilinear")
    e = channel_energy(BlockDCT()(smooth))
    assert e[list(DC_CHANNELS)].sum() / e.sum() > 0.9


# ----------------------------------------------------------------------------- module contract


def test_shapes_grid_upsample_and_state_dict():
    fe = BlockDCT()
    assert fe.channels == 192 and fe.grid(64, 32) == (8, 4)
    assert fe(_images(n=2, h=64, w=32)).shape == (2, 192, 8, 4)
    up = BlockDCT(upsample=2)
    assert up.grid(12, 20) == (3, 5)
    x = _images(n=2, h=12, w=20, seed=8)  # 12 and 20 are not multiples of 8, 24 and 40 are
    coeffs = up(x)
    assert coeffs.shape == (2, 192, 3, 5)
    back = up.inverse(coeffs)
    assert back.shape == x.shape
    # average pooling of a bilinear x2 upsample is close to, not equal to, the input
    assert 0 < (back - x).abs().mean() < 0.25
    assert len(fe.state_dict()) == 0 and "dct" in dict(fe.named_buffers())


@pytest.mark.parametrize(
    "fe,shape",
    [
        (BlockDCT(), (2, 3, 30, 32)),  # H not a multiple of 8
        (BlockDCT(), (2, 3, 32, 36)),  # W not a multiple of 8
        (BlockDCT(upsample=2), (2, 3, 14, 16)),  # 14 * 2 = 28
        (BlockDCT(), (2, 1, 32, 32)),  # grey
        (BlockDCT(), (3, 32, 32)),  # no batch axis
    ],
)
def test_bad_shapes_raise_value_error(fe, shape):
    with pytest.raises(ValueError):
        fe(torch.zeros(shape))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="multiples of 8"):
        block_dct(torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError):
        block_idct(torch.zeros(1, 100, 2, 2))
    with pytest.raises(ValueError):
        BlockDCT().inverse(torch.zeros(1, 189, 2, 2))
    with pytest.raises(ValueError):
        BlockDCT(upsample=0)


def test_gradients_flow_to_the_images():
    torch.manual_seed(9)
    x = _images(n=2, h=16, w=16, seed=9).requires_grad_(True)
    fe = BlockDCT(upsample=2)
    w = torch.randn(1, 192, 4, 4)
    (fe(x) * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the map is linear: its gradient is the adjoint applied to w, the same for any x
    x2 = _images(n=2, h=16, w=16, seed=10).requires_grad_(True)
    (fe(x2) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = _images(n=2, h=32, w=32, seed=11)
    fe = BlockDCT()
    cpu = fe(x)
    gpu = fe.cuda()(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)
    torch.testing.assert_close(fe.inverse(gpu).cpu(), x, rtol=0, atol=1e-4)
