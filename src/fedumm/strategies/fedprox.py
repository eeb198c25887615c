"""FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (MLSys).

Each client minimises its loss plus the proximal term mu/2 * ||theta - theta_global||^2 over
the trainable tensors, which keeps local models near the global one under heterogeneity.
The server aggregates like FedAvg."""

from __future__ import annotations

import torch
from pydantic import Field

from fedumm.strategies.base import ClientAlgorithm, State, StrategyParams
from fedumm.strategies.fedavg import FedAvg
from fedumm.types import LocalHooks


def proximal_term(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * sum_k ||params_k - anchor_k||^2 over the anchored (shared) tensors."""
    total = sum(((p - anchor[k]) ** 2).sum() for k, p in params.items() if k in anchor)
    return 0.5 * mu * total


class ProximalHooks(LocalHooks):
    def __init__(self, global_state: State, mu: float):
        self.global_state = global_state
        self.mu = mu
        self._anchor: dict[str, torch.Tensor] | None = None

    def extra_loss(self, params):
        if self._anchor is None:  # move the anchor to the parameters' device once
            self._anchor = {
                k: self.global_state[k].to(p.device, p.dtype) for k, p in params.items() if k in self.global_state
            }
        return proximal_term(params, self._anchor, self.mu)


class FedProxClient(ClientAlgorithm):
    def __init__(self, mu: float):
        self.mu = mu

    def hooks(self, global_state, server_extras, client_state):
        return ProximalHooks(global_state, self.mu)


class FedProxParams(StrategyParams):
    mu: float = Field(0.01, ge=0, description="Proximal coefficient mu (0 = FedAvg).")


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams

    def client_algorithm(self) -> ClientAlgorithm:
        return FedProxClient(self.params.mu)
