"""A small masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022), the generator of FaceMAE.

An image is cut into non-overlapping `patch` x `patch` patches (8 at 64 px: 64 patches).
A share `mask_ratio` of them is hidden; the ViT encoder sees the visible patches only
(with fixed 2-D sin-cos positional embeddings); a lighter decoder gets the encoded visible
tokens back in place, a learned mask token at every hidden position, its own sin-cos
positions, and predicts the pixels of every patch. Attention is torch's
`nn.TransformerEncoderLayer` (pre-norm, GELU, batch_first).

Variant built here, and why:
* Pixel loss: plain MSE on the [-1, 1] pixels of the masked patches only, NOT MAE's
  per-patch normalised targets (`norm_pix_loss`): FaceMAE publishes the reconstructions as
  face images, so the decoder must predict real pixel values, not patch-standardised ones.
* No class token (nothing here classifies), and CPU-sized widths and depths (defaults:
  encoder 128-d x 4 layers, decoder 64-d x 2 layers, about 0.6 M parameters).
* `reconstruct` returns the full image x_hat as FaceMAE does: visible patches copied from
  the input, masked patches from the decoder.

Masks. `random_mask` draws a fresh mask per image from a seeded torch.Generator (training);
`mask_for(indices, seed)` gives the mask of image `indices[i]` from a generator seeded by
(seed, index) alone, so the masked inputs of a data set can be recreated exactly later, in
any batch order. Masks are boolean (B, L), True = hidden; every row hides exactly
`num_masked` = round(mask_ratio * L) patches (at least 1, at most L - 1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding (MAE's `get_2d_sincos_pos_embed`), (grid*grid, dim):
    half the channels encode the row, half the column, each as sin/cos of geometric frequencies."""
    if dim % 4:
        raise ValueError(f"sin-cos positional embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([axis(ys), axis(xs)], dim=1).float()


def _encoder(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)


class MaskedAutoencoder(nn.Module):
    """ViT MAE over (B, 3, S, S) images in [-1, 1]; `spec()` rebuilds it without weights."""

    def __init__(self, image_size: int = 64, patch: int = 8, mask_ratio: float = 0.75, dim: int = 128,
                 depth: int = 4, heads: int = 4, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self._spec = dict(image_size=image_size, patch=patch, mask_ratio=mask_ratio, dim=dim, depth=depth,
                          heads=heads, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                          decoder_heads=decoder_heads, mlp_ratio=mlp_ratio)
        self.image_size, self.patch, self.mask_ratio = image_size, patch, float(mask_ratio)
        self.grid = image_size // patch
        self.num_patches = self.grid ** 2
        self.num_masked = min(self.num_patches - 1, max(1, round(mask_ratio * self.num_patches)))
        patch_dim = 3 * patch * patch
        self.embed = nn.Linear(patch_dim, dim)
        self.register_buffer("pos", sincos_2d(dim, self.grid)[None], persistent=False)
        self.encoder = _encoder(dim, depth, heads, mlp_ratio)
        self.to_decoder = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim).normal_(0, 0.02))
        self.register_buffer("decoder_pos", sincos_2d(decoder_dim, self.grid)[None], persistent=False)
        self.decoder = _encoder(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.to_pixels = nn.Linear(decoder_dim, patch_dim)

    def spec(self) -> dict:
        return dict(self._spec)

    # ------------------------------------------------------------------ patches and masks

    def patchify(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, L, p*p*3), patches in row-major order."""
        b, c, _, _ = x.shape
        p, g = self.patch, self.grid
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)

    def unpatchify(self, patches: Tensor) -> Tensor:
        b = patches.shape[0]
        p, g = self.patch, self.grid
        return patches.reshape(b, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, g * p, g * p)

    def _mask_from_noise(self, noise: Tensor) -> Tensor:
        """The `num_masked` patches with the largest noise are hidden (MAE's argsort trick)."""
        order = noise.argsort(dim=1)
        mask = torch.zeros_like(noise, dtype=torch.bool)
        return mask.scatter_(1, order[:, self.num_patches - self.num_masked:], True)

    def random_mask(self, batch: int, generator: torch.Generator) -> Tensor:
        """Fresh masks for a training batch, (B, L) bool, True = hidden."""
        return self._mask_from_noise(torch.rand(batch, self.num_patches, generator=generator))

    def mask_for(self, indices, seed: int) -> Tensor:
        """The mask of each image, seeded by (seed, its index) alone: reproducible per image."""
        noise = [torch.rand(self.num_patches, generator=torch.Generator().manual_seed(
            (int(seed) * 1_000_003 + int(i)) % (2 ** 63))) for i in np.asarray(indices).reshape(-1)]
        if not noise:
            return torch.zeros(0, self.num_patches, dtype=torch.bool)
        return self._mask_from_noise(torch.stack(noise))

    def masked_input(self, x: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
        """What leaves the data owner: the visible patches, hidden ones set to `fill` (grey)."""
        patches = self.patchify(x).masked_fill(mask.to(x.device)[..., None], fill)
        return self.unpatchify(patches)

    # ------------------------------------------------------------------ model

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Predicted pixels of every patch, (B, L, p*p*3); the encoder sees visible patches only."""
        mask = mask.to(x.device)
        b = x.shape[0]
        if mask.shape != (b, self.num_patches) or not bool((mask.sum(1) == self.num_masked).all()):
            raise ValueError(f"mask must be ({b}, {self.num_patches}) with {self.num_masked} hidden patches per row")
        keep = (~mask).nonzero()[:, 1].reshape(b, self.num_patches - self.num_masked)   # visible, in order
        tokens = self.embed(self.patchify(x)) + self.pos
        visible = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        latent = self.to_decoder(self.encoder(visible))
        full = self.mask_token.expand(b, self.num_patches, -1).to(latent.dtype)
        full = full.scatter(1, keep[..., None].expand(-1, -1, latent.shape[-1]), latent)
        return self.to_pixels(self.decoder(full + self.decoder_pos))

    def reconstruct(self, x: Tensor, mask: Tensor, pred: Tensor | None = None) -> Tensor:
        """x_hat: visible patches from x, hidden ones from the decoder, (B, 3, S, S)."""
        pred = self(x, mask) if pred is None else pred
        patches = torch.where(mask.to(x.device)[..., None], pred, self.patchify(x))
        return self.unpatchify(patches)

    def masked_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Pixel MSE over the hidden patches only (no per-patch normalisation; see module doc)."""
        per_patch = ((pred - self.patchify(x)) ** 2).mean(dim=-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum()


__all__ = ["MaskedAutoencoder", "sincos_2d"]
