"""Device choice in one place, so "cuda" requested on a machine without one fails loudly
instead of silently training on CPU."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """"auto": cuda if available, else cpu. "cpu", "cuda" or "cuda:N": that device, or a
    RuntimeError when CUDA (or that GPU) is absent."""
    pref = preference.strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as e:
        raise ValueError(f"unknown device {preference!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available on this machine "
                               "(use 'auto' or 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {preference!r} requested but only {torch.cuda.device_count()} "
                               "CUDA device(s) are visible")
    return device


__all__ = ["pick_device"]
