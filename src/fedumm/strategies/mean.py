"""One-shot plain mean: the baseline combiner of YOCO's code (Xu et al. 2025, "You Only Communicate
Once: One-shot Federated Low-Rank Adaptation of MLLM", NeurIPS; FedMLLM branch ``yoco``, its
``mean`` aggregation) and the reference point of every one-shot method.

Each client trains once from the initial adapter θ_0 and uploads θ_k; the global adapter is the
unweighted mean over the K uploads, per tensor (LoRA A and B averaged separately):

    θ = (1/K) Σ_k θ_k

Unlike FedAvg, every client counts once whatever its row count (the reference's choice). Stateless."""

from __future__ import annotations

from collections.abc import Sequence

from fedumm.strategies.base import ClientUpdate, State, Strategy, check_updates, weighted_average


class OneShotMean(Strategy):
    name = "mean"
    modes = ("one_shot",)
    needs_individual_updates = "the one-shot mean combines the uploads the server holds"

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        return weighted_average(check_updates(global_state, updates), [1.0] * len(updates), like=global_state)
