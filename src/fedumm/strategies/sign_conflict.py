"""One-shot sign-conflict filtering: the conflict-aware baseline of YOCO's code (Xu et al. 2025,
"You Only Communicate Once: One-shot Federated Low-Rank Adaptation of MLLM", NeurIPS; FedMLLM
branch ``yoco``, its ``conflict`` aggregation): clients whose LoRA tensor disagrees in sign with
the others' more than usual are left out of that tensor's mean.

For each LoRA tensor t (keys with ``.lora_A.`` / ``.lora_B.``) and clients i ≠ j with uploaded
values W_i^t, W_j^t (n_t elements):

    ρ_ij^t = #{e : W_i^t[e] · W_j^t[e] < 0} / n_t          pairwise sign-conflict ratio
    c_i^t  = Σ_{j ≠ i} ρ_ij^t                              client i's conflict on tensor t
    keep   S_t = {i : c_i^t ≤ μ + σ}
    W^t    = (1/|S_t|) Σ_{i ∈ S_t} W_i^t                   plain mean of the kept clients

``scope: all_tensors`` (the reference's): μ and σ are the mean and population standard
deviation of c_i^t over every (LoRA tensor, client) pair; ``per_tensor``: over the clients of
tensor t only (then the least-conflicting client is always kept). A tensor left with no client
(possible with ``all_tensors``) keeps its global value, as in the reference. Tensors that are
not LoRA factors (fully trained module groups) take the plain mean of all clients.

Choices: conflicts are measured on the uploaded weights, not on deltas (the reference's; LoRA B
starts at zero, so for B they coincide); an element that is zero in either upload is no
conflict; every client counts once (no sample weights), as in the reference. Stateless."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from fedumm.strategies.base import LORA_A, LORA_B, ClientUpdate, State, Strategy, StrategyParams, check_updates


def conflict_ratio(x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of elements where x and y have opposite signs (zero: no conflict)."""
    return float(((x.float() * y.float()) < 0).float().mean())


def conflict_sums(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """c_i = Σ_{j≠i} ρ_ij over the clients' values of one tensor (float64, one per client)."""
    n = len(values)
    ratios = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            ratios[i, j] = ratios[j, i] = conflict_ratio(values[i], values[j])
    return ratios.sum(dim=1)


def kept_clients(sums: dict[str, torch.Tensor], scope: str) -> dict[str, list[int]]:
    """Per tensor, the client indices with c_i^t ≤ μ + σ (population σ)."""
    if scope == "all_tensors":
        pooled = torch.cat(list(sums.values())) if sums else torch.zeros(0, dtype=torch.float64)
        bound = float(pooled.mean() + pooled.std(correction=0)) if len(pooled) else 0.0
        bounds = dict.fromkeys(sums, bound)
    else:
        bounds = {k: float(s.mean() + s.std(correction=0)) for k, s in sums.items()}
    # A 1e-12 slack keeps a client that sits exactly on the bound despite float rounding.
    return {k: [i for i, c in enumerate(s.tolist()) if c <= bounds[k] + 1e-12] for k, s in sums.items()}


def is_lora_factor(key: str) -> bool:
    return LORA_A in key or LORA_B in key


class SignConflictParams(StrategyParams):
    scope: Literal["all_tensors", "per_tensor"] = Field(
        "all_tensors",
        description="Where the bound mean + std of the conflict sums comes from: every (LoRA tensor, client) pair "
        "(the reference's) or each tensor's clients.",
    )


class SignConflict(Strategy):
    name = "sign_conflict"
    Params = SignConflictParams
    modes = ("one_shot",)
    needs_individual_updates = "sign-conflict filtering compares the clients' uploads element by element"

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        states = check_updates(global_state, updates)
        lora = [k for k in global_state if is_lora_factor(k)]
        sums = {k: conflict_sums([s[k] for s in states]) for k in lora}
        kept = kept_clients(sums, self.params.scope)
        out: State = {}
        for key, value in global_state.items():
            members = kept.get(key, list(range(len(states))))
            if not members:
                out[key] = value.clone()
                continue
            mean = torch.stack([states[i][key].float() for i in members]).mean(dim=0)
            out[key] = mean.to(value.dtype)
        return out
