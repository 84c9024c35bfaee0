"""Shared block-DCT frequency front end (DESIGN.md section 6), the input of dctdp, ppfrfd and hybrid.

A face becomes what a JPEG encoder sees before quantisation: RGB -> YCbCr (JPEG / JFIF
full-range matrix, values on the 0..255 scale minus 128), 8x8 blocks, orthonormal DCT-II per
block. Coefficients of one frequency are gathered into one channel, so an (N,3,H,W) image gives
(N,192,H/8,W/8) with channel ``c*64 + i*8 + j`` for colour c (Y, Cb, Cr) and frequency (row i,
column j); channel c*64 is the DC of colour c (``DC_CHANNELS``). Frequency-domain defenses drop or
mask channels, and an FR backbone whose stem takes 192 (or 189) channels reads the rest.

Variant, against Tencent TFace ``recognition/tasks/dctdp/utils.py::images_to_batch``:
- same colour transform, scale, block size, orthonormal DCT and channel order (torchjpeg's
  ``block_dct`` flattens each block row-major);
- the optional upsample by ``u`` (TFace: u=8 at 112 px, one block per pixel) uses bilinear
  interpolation with ``align_corners=False`` (TFace: ``align_corners=True``) and is applied after
  the colour transform (TFace: before). Both operations are linear and per channel / per pixel, so
  the order does not change the result; the corner convention changes it slightly;
- TFace's forward has no inverse. Ours does: ``block_idct`` and the colour inverse are exact, which
  the representation-recovery attack and the masking defenses need to see what survives a mask.
- The DCT is a matrix product on reshaped tensors (D @ B @ D.T for all blocks at once, as
  (D kron D) @ vec(B)), not torchjpeg, so it runs on CPU and CUDA, is differentiable, and needs
  no extra dependency.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DC_CHANNELS",
    "BlockDCT",
    "block_dct",
    "block_idct",
    "channel_energy",
    "dct_matrix",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]

DC_CHANNELS = (0, 64, 128)

# JPEG (JFIF, ITU-R BT.601 full range) RGB -> YCbCr. The Y row sums to 1 and the chroma rows to 0,
# so applying it to (RGB - 128) gives (Y - 128, Cb - 128, Cr - 128) directly.
_RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168735892, -0.331264108, 0.5],
        [0.5, -0.418687589, -0.081312411],
    ],
    dtype=torch.float64,
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _check_images(x: Tensor, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what}: expected images of shape (N, 3, H, W), got {tuple(x.shape)}")


def _colour(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a 3x3 colour matrix to every pixel."""
    return (matrix.to(dtype=x.dtype, device=x.device) @ x.flatten(2)).view_as(x)


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """(N,3,H,W) RGB in [-1, 1] -> YCbCr in JPEG units minus 128 (each channel roughly in [-128, 127])."""
    _check_images(x, "rgb_to_ycbcr")
    return _colour(_RGB_TO_YCBCR, x * 127.5 - 0.5)  # [-1,1] -> 0..255, minus 128


def ycbcr_to_rgb(y: Tensor) -> Tensor:
    """Exact inverse of ``rgb_to_ycbcr``: YCbCr minus 128 -> RGB in [-1, 1] (not clamped)."""
    _check_images(y, "ycbcr_to_rgb")
    return (_colour(_YCBCR_TO_RGB, y) + 0.5) / 127.5


def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Orthonormal DCT-II matrix D (n x n), D @ D.T = I; the DCT of a vector v is D @ v.

    Closed form D[k, m] = sqrt(2/n) c_k cos(pi (2m+1) k / 2n), c_0 = 1/sqrt(2), c_k = 1 otherwise
    (scipy.fft.dct(..., norm="ortho")); built in float64, then cast.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"dct_matrix: n must be a positive int, got {n!r}")
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    m = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = math.sqrt(2.0 / n) * torch.cos(math.pi * (2 * m + 1) * k / (2 * n))
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def _check_block(block: int) -> None:
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")


def _dct_blocks(y: Tensor, d: Tensor) -> Tensor:
    """(N,C,H,W) -> (N, C*b*b, H/b, W/b) with the b x b DCT matrix d; shapes already checked.

    D @ B @ D.T for every block B at once, written as one matrix product on the row-major
    flattened blocks: vec(D B D.T) = (D kron D) vec(B). Gathering each block's b*b pixels on the
    channel axis first makes the result land directly in the (c*b*b + i*b + j) channel layout.
    """
    n, c, h, w = y.shape
    b = d.shape[0]
    blocks = y.reshape(n, c, h // b, b, w // b, b).permute(0, 1, 3, 5, 2, 4)  # (N,C,row,col,P,Q)
    coeffs = torch.kron(d, d) @ blocks.reshape(n, c, b * b, -1)
    return coeffs.reshape(n, c * b * b, h // b, w // b)


def _idct_blocks(coeffs: Tensor, d: Tensor) -> Tensor:
    """(N, C*b*b, P, Q) -> (N, C, P*b, Q*b); inverse of ``_dct_blocks`` (D orthonormal, so is D kron D)."""
    n, cbb, p, q = coeffs.shape
    b = d.shape[0]
    c = cbb // (b * b)
    pixels = torch.kron(d, d).T @ coeffs.reshape(n, c, b * b, p * q)
    return pixels.reshape(n, c, b, b, p, q).permute(0, 1, 4, 2, 5, 3).reshape(n, c, p * b, q * b)


def block_dct(y: Tensor, block: int = 8) -> Tensor:
    """Orthonormal DCT-II of every block x block tile: (N,C,H,W) -> (N, C*block^2, H/block, W/block).

    Channel ``c*block^2 + i*block + j`` holds frequency (row i, column j) of colour c.
    """
    _check_block(block)
    if y.ndim != 4:
        raise ValueError(f"block_dct: expected a 4-d tensor (N, C, H, W), got shape {tuple(y.shape)}")
    h, w = y.shape[-2:]
    if h % block or w % block:
        raise ValueError(f"block_dct: height and width must be multiples of {block}, got {h}x{w}")
    return _dct_blocks(y, dct_matrix(block, y.dtype, y.device))


def block_idct(coeffs: Tensor, block: int = 8) -> Tensor:
    """Exact inverse of ``block_dct``: (N, C*block^2, P, Q) -> (N, C, P*block, Q*block)."""
    _check_block(block)
    if coeffs.ndim != 4 or coeffs.shape[1] % (block * block):
        raise ValueError(
            f"block_idct: expected (N, C*{block * block}, P, Q) coefficients, got shape {tuple(coeffs.shape)}"
        )
    return _idct_blocks(coeffs, dct_matrix(block, coeffs.dtype, coeffs.device))


def channel_energy(coeffs: Tensor) -> Tensor:
    """Mean squared coefficient per channel over batch and grid, shape (C,) (192 for colour images).

    Every channel has the same number of entries, so ``energy[kept].sum() / energy.sum()`` is the
    share of image energy (Parseval) a channel mask keeps.
    """
    if coeffs.ndim != 4:
        raise ValueError(f"channel_energy: expected (N, C, P, Q) coefficients, got shape {tuple(coeffs.shape)}")
    return coeffs.pow(2).mean(dim=(0, 2, 3))


class BlockDCT(nn.Module):
    """Images in [-1, 1] (N,3,H,W) -> block-DCT coefficients (N, 192, H*u/8, W*u/8).

    ``upsample`` = u: bilinear upsample (align_corners=False) of the YCbCr image before the DCT
    (TFace dctdp uses u=8 at 112 px). ``inverse`` is exact for u=1. For u > 1 it inverts the DCT and
    the colour transform exactly but undoes the upsample by u x u average pooling, which is only an
    approximate inverse of bilinear interpolation: the result is the image resized back, not the input.
    The DCT matrix is a non-persistent buffer (nothing in the state_dict), kept in float64 so that
    casting it to the input's dtype is exact; ``.to(dtype)`` is honoured without losing precision.
    """

    def __init__(self, upsample: int = 1, block: int = 8):
        super().__init__()
        if not isinstance(upsample, int) or upsample < 1:
            raise ValueError(f"BlockDCT: upsample must be a positive int, got {upsample!r}")
        _check_block(block)
        self.upsample, self.block = upsample, block
        self.register_buffer("dct", dct_matrix(block, torch.float64), persistent=False)

    def _matrix(self, like: Tensor) -> Tensor:
        """The DCT matrix in ``like``'s dtype: cast down from float64, rebuilt if the module was cast lower."""
        if self.dct.dtype == like.dtype or self.dct.dtype == torch.float64:
            return self.dct.to(dtype=like.dtype)
        return dct_matrix(self.block, like.dtype, self.dct.device)

    @property
    def channels(self) -> int:
        return 3 * self.block * self.block

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of the coefficient map for an h x w image."""
        u, b = self.upsample, self.block
        if (h * u) % b or (w * u) % b:
            raise ValueError(
                f"BlockDCT: image size {h}x{w} times upsample {u} = {h * u}x{w * u} is not a multiple of block {b}"
            )
        return h * u // b, w * u // b

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "BlockDCT")
        h, w = x.shape[-2:]
        self.grid(h, w)  # validates the size
        y = rgb_to_ycbcr(x)
        if self.upsample > 1:
            y = F.interpolate(y, size=(h * self.upsample, w * self.upsample), mode="bilinear", align_corners=False)
        return _dct_blocks(y, self._matrix(y))

    def inverse(self, coeffs: Tensor) -> Tensor:
        """Coefficients -> RGB in [-1, 1] (not clamped); exact for u=1, resized back for u > 1."""
        if coeffs.ndim != 4 or coeffs.shape[1] != self.channels:
            raise ValueError(
                f"BlockDCT.inverse: expected (N, {self.channels}, P, Q) coefficients, got shape {tuple(coeffs.shape)}"
            )
        y = _idct_blocks(coeffs, self._matrix(coeffs))
        if self.upsample > 1:
            y = F.avg_pool2d(y, self.upsample)
        return ycbcr_to_rgb(y)

    def extra_repr(self) -> str:
        return f"upsample={self.upsample}, block={self.block}"
