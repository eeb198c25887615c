"""FedAvgM: Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification" (arXiv:1909.06335): FedAvg with server momentum.

Each round the server forms the sample-weighted mean client delta
    Δ = sum_k n_k (θ_k − θ) / sum_k n_k
and takes a heavy-ball step with momentum beta and server learning rate eta_s:
    v <- beta * v + Δ,        θ <- θ + eta_s * v                      (variant "paper", v_0 = 0)
The paper writes w <- w − v with Δw the negated delta, i.e. eta_s = 1; for a steady Δ the step
tends to eta_s / (1 − beta) times FedAvg's (the paper's "effective learning rate").
beta = 0 with eta_s = 1 is exactly FedAvg.

Variant "openfedllm" reproduces the seed benchmarks' code (OpenFedLLM / FedVLMBench), an
exponential moving average initialised with the first Δ instead of heavy-ball momentum:
    v <- Δ on a tensor's first update, else v <- beta * v + (1 − beta) * Δ;   θ <- θ + eta_s * v
(their code has no server learning rate, so keep eta_s = 1; their beta is fedopt_beta1, 0.9 by default).

The velocity v is server state: one float32 tensor per key, created the first time that key
is trained (clients may train a subset of the tensors in a round), in ``state_dict`` as
``momentum/<key>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from fedumm.strategies.base import ClientUpdate, State, Strategy, StrategyParams
from fedumm.strategies.stateful import check_known_shapes, check_per_key_state, mean_delta, split_prefixed

PREFIX = "momentum/"


class FedAvgMParams(StrategyParams):
    server_lr: float = Field(1.0, gt=0, le=100, description="Server learning rate eta_s applied to the velocity.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum beta in [0, 1) (0 = FedAvg, with eta_s).")
    variant: Literal["paper", "openfedllm"] = Field(
        "paper",
        description="'paper': v <- beta v + Δ (Hsu et al. 2019); 'openfedllm': v <- beta v + (1 - beta) Δ "
        "with v = Δ on the first update (OpenFedLLM / FedVLMBench code).",
    )


class FedAvgM(Strategy):
    name = "fedavgm"
    Params = FedAvgMParams

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.velocity: State = {}  # v per key, float32, created lazily

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        delta = mean_delta(global_state, updates)
        check_known_shapes(global_state, self.velocity, "FedAvgM velocity")
        beta, lr = self.params.momentum, self.params.server_lr
        new_state: State = {}
        for key, value in global_state.items():
            if key not in self.velocity:  # v_0 = 0 (paper) and v = Δ (openfedllm) agree here
                v = delta[key]
            elif self.params.variant == "paper":
                v = beta * self.velocity[key] + delta[key]
            else:
                v = beta * self.velocity[key] + (1 - beta) * delta[key]
            self.velocity[key] = v
            new_state[key] = (value.float() + lr * v).to(value.dtype)
        return new_state

    def state_dict(self) -> State:
        return {PREFIX + k: v.clone() for k, v in self.velocity.items()}

    def load_state_dict(self, state, reference=None):
        velocity = split_prefixed(state, [PREFIX], self.name)[PREFIX]
        if reference is not None:
            check_per_key_state(reference, velocity, f"{self.name} server state {PREFIX}")
        self.velocity = velocity
