"""Client-side error feedback (Seide et al. 2014, "1-bit SGD"; Karimireddy et al. 2019, "Error
Feedback Fixes SignSGD and other Gradient Compression Schemes").

A client keeps the residual e of what compression dropped and adds it to its next update:

    p_t = Δ_t + e_{t-1},    sent_t = D(C(p_t)),    e_t = p_t − sent_t    (e_0 = 0)

so by telescoping Σ_{t≤T} sent_t + e_T = Σ_{t≤T} Δ_t: nothing is lost, only delayed. The residual
is per tensor key; a key the round does not train keeps its residual for a later round.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedumm.types import State


def compensate(delta: Mapping[str, torch.Tensor], residual: Mapping[str, torch.Tensor]) -> State:
    """p = Δ + e over the keys of ``delta`` (a key without a residual yet adds zero)."""
    return {k: v.float() + residual[k] if k in residual else v.float() for k, v in delta.items()}


def next_residual(
    corrected: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor], residual: Mapping[str, torch.Tensor]
) -> State:
    """e_t = p_t − sent_t for the keys sent; the other keys' residuals stay."""
    return {**residual, **{k: corrected[k] - sent[k] for k in corrected}}
