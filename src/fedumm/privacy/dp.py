"""The numeric core of client-level DP-FedAvg and adaptive clipping, over ``dict[str, Tensor]``.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
ICLR), one round with Poisson-sampled clients S (each with probability q out of N):

    Δ̃_k = Δ_k · min(1, C / ||Δ_k||_2)                   clip each client's whole update
    Δ̄   = (Σ_{k∈S} Δ̃_k + N(0, (z·C)² I)) / (q·N)        noise once on the sum, divide by the
                                                          EXPECTED participants, not |S|

Dividing by the expected count keeps the sensitivity of Δ̄ at C / (qN) whatever |S| is.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", NeurIPS): each client also reports b_k = 1[||Δ_k|| <= C]; with σ_b the std of the
noise on the count,

    b̄ = (Σ_k b_k + N(0, σ_b²)) / (q·N)
    C ← C · exp(−η_C (b̄ − γ))                            γ = target quantile

and the two queries together cost what one Gaussian query of multiplier z costs when the
update's own multiplier is z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (the count has sensitivity 1/2 once
the bits are centred).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from fedumm.types import State


def l2_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """||·||_2 over all tensors together (float64 accumulation)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def clip(delta: Mapping[str, torch.Tensor], bound: float) -> tuple[State, float]:
    """(Δ · min(1, C / ||Δ||), ||Δ||) in float32."""
    norm = l2_norm(delta)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v.float() * scale for k, v in delta.items()}, norm


def gaussian_like(like: Mapping[str, torch.Tensor], std: float, generator: torch.Generator) -> State:
    """Independent N(0, std²) per coordinate, shaped like ``like`` (float32), drawn in sorted key
    order so that the same generator gives the same noise whatever order the state's keys are in."""
    return {k: torch.randn(like[k].shape, generator=generator, dtype=torch.float32) * std for k in sorted(like)}


def noisy_mean(
    clipped: Sequence[Mapping[str, torch.Tensor]],
    like: Mapping[str, torch.Tensor],
    noise_std: float,
    expected: float,
    generator: torch.Generator | None,
) -> State:
    """(Σ_k Δ̃_k + N(0, noise_std²)) / expected; ``generator`` None = no noise added here (the
    clients added it: local or distributed DP)."""
    total = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in like.items()}
    for delta in clipped:
        for k in total:
            total[k].add_(delta[k].float())
    if generator is not None and noise_std > 0:
        for k, noise in gaussian_like(like, noise_std, generator).items():
            total[k].add_(noise)
    return {k: v / expected for k, v in total.items()}


def adaptive_clip_step(
    clip_norm: float, unclipped_sum: float, expected: float, target_quantile: float, learning_rate: float
) -> float:
    """C · exp(−η_C (b̄ − γ)), b̄ = ``unclipped_sum`` (noisy count of unclipped updates) / expected."""
    return clip_norm * math.exp(-learning_rate * (unclipped_sum / expected - target_quantile))


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update's share of the total multiplier z."""
    if noise_multiplier == 0:
        return 0.0
    if 2 * count_stddev <= noise_multiplier:
        raise ValueError(
            f"privacy.clipped_count_stddev ({count_stddev:g}) must exceed noise_multiplier / 2 "
            f"({noise_multiplier / 2:g}) or the count alone spends the whole budget"
        )
    return (noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5
