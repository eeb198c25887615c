"""FLoRA: Wang et al. 2024, "FLoRA: Federated Fine-Tuning Large Language Models with
Heterogeneous Low-Rank Adaptations" (NeurIPS): exact aggregation by stacking.

Client k of rank r_k sends (A_k, B_k). Per LoRA module m the server stacks them,
    A_stack = [A_1; A_2; ...; A_K]            (Σ r_k rows)
    B_stack = [w_1 B_1, w_2 B_2, ..., w_K B_K]  (Σ r_k columns),  w_k = n_k / Σ_j n_j,
so that B_stack A_stack = Σ_k w_k B_k A_k exactly (no cross terms B_j A_k), and merges the
stacked product into the model: D_m <- D_m + B_stack A_stack. The local LoRA then restarts:
the global factors go back to A = the seeded initial A, B = 0, and every client again trains
its first r_k components from there.

fedumm keeps ONE frozen base for all clients, so the merged stack is not written into a copy
of the base per client: the strategy keeps the accumulated D_m (dense, d_out x d_in, float32,
server state ``flora_delta/<module>``) and every message carries it in its extras
(``lowrank.FROZEN_DELTA_PREFIX``); the model host adds s·D_m to the base weight of module m
(s = alpha / R, the host's LoRA scale) until the next message replaces it. Memory is one dense
matrix per LoRA module whatever the number of clients or rounds (stacking across rounds
would grow with both); the download carries the dense D_m, the upload each client's own
rank-r_k factors. The global model is base + s·D (its factors are A_init, 0): the saved PEFT
adapter is the SVD of D + B A at D's numerical rank (``ModelHost.save_pretrained``).
Tensors that are not LoRA factors are averaged with the sample weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedumm.lowrank import A_SUFFIX, B_SUFFIX, lora_modules, non_factor_keys
from fedumm.strategies.base import ClientUpdate, State, Strategy, sample_weights, weighted_average

PREFIX = "flora_delta/"


def stacked_product(updates: Sequence[ClientUpdate], module: str) -> torch.Tensor:
    """B_stack A_stack of one module (float32): the weighted sum of the clients' products."""
    weights = sample_weights(updates)
    total = sum(weights)
    a_stack = torch.cat([u.state[module + A_SUFFIX].float() for u in updates], dim=0)
    b_stack = torch.cat([w / total * u.state[module + B_SUFFIX].float() for w, u in zip(weights, updates)], dim=1)
    return b_stack @ a_stack


class FLoRA(Strategy):
    name = "flora"
    rank_aware = True
    needs_individual_updates = "the stack holds each client's own factors"

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.delta: State = {}  # module -> accumulated Σ_rounds B_stack A_stack

    def frozen_delta(self) -> State:
        return dict(self.delta)

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        out: State = {}
        for module in lora_modules(global_state):
            stacked = stacked_product(updates, module)
            self.delta[module] = self.delta.get(module, torch.zeros_like(stacked)) + stacked
            out[module + A_SUFFIX] = global_state[module + A_SUFFIX].clone()  # the seeded initial A
            out[module + B_SUFFIX] = torch.zeros_like(global_state[module + B_SUFFIX])
        rest = non_factor_keys(global_state)
        if rest:
            states = [{k: u.state[k] for k in rest} for u in updates]
            out.update(weighted_average(states, sample_weights(updates), like=global_state))
        return out

    def state_dict(self) -> State:
        return {PREFIX + k: v.clone() for k, v in self.delta.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], reference: State | None = None) -> None:
        delta: State = {}
        for name, tensor in state.items():
            if not name.startswith(PREFIX):
                raise ValueError(f"{self.name}: unexpected server state key {name!r} (expected prefix {PREFIX!r})")
            module = name[len(PREFIX) :]
            if reference is not None:
                a, b = reference.get(module + A_SUFFIX), reference.get(module + B_SUFFIX)
                if a is None or b is None:
                    raise ValueError(f"{self.name}: {name!r} is not a LoRA module of the global adapter")
                if tuple(tensor.shape) != (b.shape[0], a.shape[1]):
                    raise ValueError(
                        f"{self.name}: {name!r} has shape {tuple(tensor.shape)}, expected {(b.shape[0], a.shape[1])}"
                    )
            delta[module] = tensor.detach().to(torch.float32).clone()
        self.delta = delta
