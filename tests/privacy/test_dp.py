"""The numeric core of DP-FedAvg: clipping, the noisy mean, adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedumm.privacy import dp


def test_clipping_scales_an_update_above_the_bound_onto_it():
    # Prepare: ||(3, 4) ; (12)|| = 13 over both tensors together.
    delta = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}
    # Execute
    clipped, norm = dp.clip(delta, 6.5)
    # Assert
    assert norm == pytest.approx(13.0)
    assert torch.allclose(clipped["a"], torch.tensor([1.5, 2.0])) and torch.allclose(clipped["b"], torch.tensor([6.0]))
    assert dp.l2_norm(clipped) == pytest.approx(6.5)


def test_clipping_leaves_an_update_within_the_bound_alone():
    delta = {"a": torch.tensor([0.3, 0.4])}
    clipped, norm = dp.clip(delta, 1.0)
    assert norm == pytest.approx(0.5) and torch.equal(clipped["a"], delta["a"])


@pytest.mark.parametrize("norms", [[0.5, 2.0, 40.0], [1e-3, 1e3]])
def test_every_clients_contribution_to_the_mean_is_bounded(norms):
    # Prepare: clients whose updates have known norms, bound C = 1, 4 expected participants.
    bound, expected = 1.0, 4.0
    updates = [{"w": torch.tensor([n, 0.0])} for n in norms]
    clipped = [dp.clip(u, bound)[0] for u in updates]
    # Execute
    mean = dp.noisy_mean(clipped, updates[0], 0.0, expected, None)
    # Assert: each contributes min(n, C) / expected.
    assert float(mean["w"][0]) == pytest.approx(sum(min(n, bound) for n in norms) / expected)


def test_the_noise_std_on_the_mean_is_z_c_over_the_expected_participants():
    # Prepare: z = 1.5, C = 2, q·N = 8; zero updates, so the mean is pure noise.
    z, bound, expected = 1.5, 2.0, 8.0
    like = {"w": torch.zeros(200, 100)}
    generator = torch.Generator().manual_seed(0)
    # Execute: 20,000 draws.
    mean = dp.noisy_mean([like], like, z * bound, expected, generator)
    # Assert
    assert float(mean["w"].std()) == pytest.approx(z * bound / expected, rel=0.02)
    assert abs(float(mean["w"].mean())) < 0.01


def test_the_adaptive_bound_moves_by_the_geometric_rule():
    # C exp(-eta (b/m - gamma)) = 1 * exp(-0.2 * (6/8 - 0.5)) = exp(-0.05)
    assert dp.adaptive_clip_step(1.0, 6.0, 8.0, 0.5, 0.2) == pytest.approx(math.exp(-0.05))


def test_adaptive_clipping_converges_to_the_target_quantile():
    # Prepare: 100 clients whose update norms are log-normal around 3, count noise sigma_b = 100/20.
    rng = np.random.default_rng(1)
    norms = rng.lognormal(mean=math.log(3.0), sigma=0.5, size=100)
    for quantile in (0.3, 0.5, 0.8):
        clip = 0.1
        for _ in range(400):
            unclipped = float((norms <= clip).sum()) + rng.normal(0, 5.0)
            clip = dp.adaptive_clip_step(clip, unclipped, 100, quantile, 0.2)
        # Assert: the share left unclipped sits at the target.
        assert float((norms <= clip).mean()) == pytest.approx(quantile, abs=0.08)
        assert clip == pytest.approx(float(np.quantile(norms, quantile)), rel=0.2)


def test_the_update_noise_multiplier_leaves_room_for_the_count():
    # (1^-2 - (2*1)^-2)^-1/2 = (3/4)^-1/2
    assert dp.update_noise_multiplier(1.0, 1.0) == pytest.approx((0.75) ** -0.5)
    assert dp.update_noise_multiplier(0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        dp.update_noise_multiplier(1.0, 0.5)
