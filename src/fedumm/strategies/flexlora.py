"""FlexLoRA: Bai et al. 2024, "Federated Fine-tuning of Large Language Models under
Heterogeneous Tasks and Client Resources" (NeurIPS).

Each client k of rank r_k sends its factors (A_k, B_k); the server aggregates the full-size
updates they make, not the factors:
    ΔW_m = Σ_k (n_k / Σ_j n_j) B_{k,m} A_{k,m}                       (per LoRA module m)
then factorises it by SVD, ΔW_m = U S Vᵀ, and keeps the global adapter at the host's rank R:
    B_m = U_R S_R^½,   A_m = S_R^½ V_Rᵀ
(the singular values shared evenly between the factors; any split gives the same product).
Client k receives the first r_k components, B_m[:, :r_k] A_m[:r_k] = U_{r_k} S_{r_k} V_{r_k}ᵀ,
the best rank-r_k approximation of ΔW_m (Eckart-Young). The global adapter is the rank-R
truncation of ΔW_m, exact while ΔW_m's rank (at most Σ_k r_k) does not exceed R. Tensors that
are not LoRA factors are averaged with the same weights. The LoRA scale s = alpha / R is common
to every client and the global adapter, so the products are aggregated without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedumm.lowrank import A_SUFFIX, B_SUFFIX, lora_modules, non_factor_keys, product, split_svd, state_rank
from fedumm.strategies.base import ClientUpdate, State, Strategy, sample_weights, weighted_average


def aggregate_products(updates: Sequence[ClientUpdate], module: str) -> torch.Tensor:
    """Σ_k w_k B_k A_k of one module, w_k = n_k / Σ n (float32)."""
    weights = sample_weights(updates)
    total = sum(weights)
    return sum(w / total * product(u.state, module) for w, u in zip(weights, updates))


class FlexLoRA(Strategy):
    name = "flexlora"
    rank_aware = True
    needs_individual_updates = "the products B_k A_k are formed from each client's own factors"

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        rank = state_rank(global_state) or 0
        out: State = {}
        for module in lora_modules(global_state):
            b, a = split_svd(aggregate_products(updates, module), rank)
            out[module + B_SUFFIX] = b.to(global_state[module + B_SUFFIX].dtype)
            out[module + A_SUFFIX] = a.to(global_state[module + A_SUFFIX].dtype)
        rest = non_factor_keys(global_state)
        if rest:
            states = [{k: u.state[k] for k in rest} for u in updates]
            out.update(weighted_average(states, sample_weights(updates), like=global_state))
        return out
