"""Views of one split as training arrays: images and labels renumbered 0..K-1."""

from __future__ import annotations

import numpy as np
import pandas as pd


def split_view(images: np.ndarray, manifest: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels 0..K-1, original identity ids) of the rows of `split`, in index order."""
    part = manifest[manifest["split"] == split].sort_values("index")
    if part.empty:
        raise ValueError(f"split {split!r} is empty")
    identities = part["identity"].to_numpy()
    _, labels = np.unique(identities, return_inverse=True)
    return images[part["index"].to_numpy()], labels.astype(np.int64), identities


def split_attributes(manifest: pd.DataFrame, split: str) -> pd.DataFrame | None:
    """The attribute columns of `split`'s rows in the order of `split_view`, or None when
    the manifest has no attribute columns."""
    from components.data.schema import attribute_columns

    cols = attribute_columns(manifest)
    if not cols:
        return None
    part = manifest[manifest["split"] == split].sort_values("index")
    return part[cols].reset_index(drop=True)
