"""Batched feature extraction for evaluation, following insightface's verification code:
images scaled to [-1, 1] ((x - 127.5) / 127.5, NCHW) and flip-averaging (the features of an image
and of its horizontal mirror are added). Templates come back un-normalised; the metrics normalise.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

__all__ = ["extract_features", "to_model_tensor"]


def to_model_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> float32 (N, 3, H, W) in [-1, 1], as insightface: (x - 127.5) / 127.5."""
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8:
        raise ValueError(f"to_model_tensor expects uint8 images, got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"to_model_tensor expects (N, H, W, 3) images, got shape {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(torch.float32)
    return ((t - 127.5) / 127.5).contiguous()


def _batches(images, batch_size: int):
    """Yield float32 (B, 3, H, W) batches in [-1, 1] from either accepted input kind."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got shape {images.shape}")
        for i in range(0, images.shape[0], batch_size):
            yield to_model_tensor(images[i : i + batch_size])
        return
    if isinstance(images, np.ndarray):
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be uint8 (N, H, W, 3) or float (N, 3, H, W), got dtype {images.dtype}")
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if not torch.is_floating_point(images):
        raise ValueError(
            f"tensor images must be float (N, 3, H, W) in [-1, 1], got dtype {images.dtype}; "
            "pass uint8 images as a numpy (N, H, W, 3) array"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size].to(torch.float32)


def extract_features(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images,
    batch_size: int = 256,
    flip: bool = True,
    device="cpu",
) -> np.ndarray:
    """Features for a uint8 image array (N, H, W, 3) or float tensor (N, 3, H, W) in [-1, 1].

    fn maps a float tensor batch (B, 3, H, W) in [-1, 1] on `device` to features (B, D). Runs under
    torch.inference_mode. With flip=True the features of the image and of its horizontal mirror are
    added (insightface flip-averaging). Returns float32 numpy (N, D), not normalised. Pass a model
    already in eval mode (a warning is issued for an nn.Module in training mode).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0] if hasattr(images, "shape") and len(images.shape) else 0
    if n == 0:
        raise ValueError("no images given (empty input)")
    if isinstance(fn, torch.nn.Module) and fn.training:
        warnings.warn(
            "extract_features got an nn.Module in training mode (batch-norm/dropout active); call .eval() first",
            stacklevel=2,
        )
    device = torch.device(device)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in _batches(images, int(batch_size)):
            batch = batch.to(device, non_blocking=True)
            feats = fn(batch)
            if flip:
                feats = feats + fn(torch.flip(batch, dims=[3]))
            if feats.ndim != 2 or feats.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"fn must return (B, D) features for a batch of {batch.shape[0]}, got shape {tuple(feats.shape)}"
                )
            out.append(feats.detach().to("cpu", torch.float32).numpy())
    return np.concatenate(out, axis=0)
