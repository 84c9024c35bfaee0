"""Frequency front ends shared by the frequency-domain defenses (dctdp, ppfrfd, hybrid)."""

from components.freq.dct import (
    DC_CHANNELS,
    BlockDCT,
    block_dct,
    block_idct,
    channel_energy,
    dct_matrix,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)

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
