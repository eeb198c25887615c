"""One-shot optimal-transport alignment, then the mean: the OT baseline of YOCO's code (Xu et al.
2025, "You Only Communicate Once: One-shot Federated Low-Rank Adaptation of MLLM", NeurIPS;
FedMLLM branch ``yoco``, ``ot_process.py``), in the spirit of OT model fusion (Singh & Jaggi
2020, "Model Fusion via Optimal Transport", NeurIPS), computed with POT (Flamary et al. 2021,
"POT: Python Optimal Transport", JMLR).

Each LoRA tensor of every client is aligned to the reference client's (the lowest client id of
the round, the reference's client 0) element by element, then all are averaged. With the
reference's values a ∈ R^n and client k's values b ∈ R^n (the tensor flattened), uniform
marginals 1/n and the squared-distance cost M_ij = (a_i − b_j)^2:

    P* = argmin_{P ≥ 0, P 1 = 1/n, P^T 1 = 1/n} <P, M>                 exact OT plan (n × n)
    barycentric:  b̃_i = Σ_j P*_ij b_j / Σ_j P*_ij = n (P* b)_i          (default)
    reference:    b̃ = P* b                                                (the code's form)
    θ^t = (1/K) (a + Σ_{k ≠ ref} b̃_k)                                     plain mean

The code's ``plan @ W2`` keeps the uniform marginals in the product, which scales the aligned
values by 1/n; ``projection: barycentric`` divides by the row mass (the barycentric projection
of the plan) so aligned values stay on the clients' scale, and ``projection: reference``
reproduces the code's numbers. For one-dimensional costs the plan is the monotone coupling
(b's values rearranged in a's rank order); POT's exact 1-D solver ``ot.emd_1d`` returns the same
plan as ``ot.emd`` on ``ot.dist`` without forming the n × n cost (n is the tensor's size).
Tensors that are not LoRA factors take the plain mean without alignment, as in the reference.
Every client counts once (no sample weights). Stateless."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedumm.strategies.base import LORA_A, LORA_B, ClientUpdate, State, Strategy, StrategyParams, check_updates


def ot_plan(reference: np.ndarray, values: np.ndarray):
    """The exact OT plan between the flat arrays' uniform empirical measures (squared cost), sparse n × n."""
    import ot  # the oneshot extra (pip install 'fedumm[oneshot]')

    return ot.emd_1d(reference, values, metric="sqeuclidean", dense=False)


def align(reference: torch.Tensor, values: torch.Tensor, projection: str = "barycentric") -> torch.Tensor:
    """``values`` transported onto ``reference``'s elements (same shape, float32)."""
    a = reference.detach().double().flatten().numpy()
    b = values.detach().double().flatten().numpy()
    plan = ot_plan(a, b)
    moved = np.asarray(plan @ b).ravel()
    if projection == "barycentric":
        moved = moved / np.asarray(plan.sum(axis=1)).ravel()
    return torch.from_numpy(moved).reshape(values.shape).float()


class OTAlignParams(StrategyParams):
    projection: Literal["barycentric", "reference"] = Field(
        "barycentric",
        description="barycentric: aligned values Σ_j P_ij b_j / Σ_j P_ij (on the clients' scale); reference: the "
        "reference code's P b, which scales them by 1/n (to reproduce its numbers).",
    )


class OTAlign(Strategy):
    name = "ot_align"
    Params = OTAlignParams
    modes = ("one_shot",)
    needs_individual_updates = "optimal-transport alignment maps each client's upload onto another's"

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        check_updates(global_state, updates)
        ordered = sorted(updates, key=lambda u: u.client_id)
        reference, others = ordered[0].state, [u.state for u in ordered[1:]]
        out: State = {}
        for key, value in global_state.items():
            first = reference[key].float()
            if LORA_A in key or LORA_B in key:
                rest = [align(first, s[key], self.params.projection) for s in others]
            else:
                rest = [s[key].float() for s in others]
            out[key] = torch.stack([first, *rest]).mean(dim=0).to(value.dtype)
        return out
