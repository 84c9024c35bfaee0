"""dctdp's project mode reads its clip ranges from public faces only, and reports the
per-face budget it spends (eps_mean, N, epsilon_total)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from components.defenses import get_defense
from components.defenses.dctdp import DCTDPFront, _ranges


def _ctx(world, params, tmp_path=None):
    return world.defense_context(params, tmp_path)


def test_project_mode_clips_to_the_public_range_not_the_private_one(world):
    ctx = _ctx(world, {"mode": "project", "eps_mean": 20.0, "upsample": 2, "train": {"epochs": 1, "warmup_epochs": 0}})
    system = get_defense("dctdp").build(ctx)
    probe = DCTDPFront(2, (189, 8, 8), 1.0)
    public_lo, public_hi = _ranges(probe, ctx.public_images)
    private_lo, private_hi = _ranges(probe, ctx.train_images)
    noise = system.front.noise
    assert torch.equal(noise.lo, public_lo) and torch.equal(noise.hi, public_hi)
    assert not torch.equal(noise.lo, private_lo)        # the two sets differ, so the test can tell them apart
    op = system.operating_point()
    assert op["elements"] == 189 * 8 * 8 and op["epsilon_total"] == pytest.approx(20.0 * op["elements"])
    assert "not a differential privacy guarantee" in get_defense("dctdp").threat_model({}).note


def test_project_mode_without_public_faces_is_refused_with_a_clear_error(world):
    ctx = _ctx(world, {"mode": "project", "train": {"epochs": 1, "warmup_epochs": 0}})
    empty = dataclasses.replace(ctx, public_images=np.zeros((0, *ctx.train_images.shape[1:]), np.uint8),
                                public_labels=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="public images"):
        get_defense("dctdp").build(empty)
