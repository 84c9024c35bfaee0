"""The attack-test world is sound: the baseline verifies well above chance on unseen
identities and the baseline system follows the defended-system protocol."""

import torch

from components.metrics.utility import evaluate_system


def test_world_baseline_is_a_working_fr_system(world):
    system = world.baseline_system()
    utility, _ = evaluate_system(system, world.images, world.manifest, world.pairs)
    assert utility["verification_accuracy"] > 0.7, utility
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert system.logits(x).shape == (3, 30)
    assert set(world.manifest.columns) >= {"split", "sex", "skin", "identity"}
