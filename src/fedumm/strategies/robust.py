"""Byzantine-robust aggregators: coordinate-wise median and trimmed mean (Yin et al. 2018,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML), Krum and
multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS).

All three work on the client deltas Δ_k = θ_k − θ (float32, keys and shapes checked first) and
return θ + agg(Δ_1..Δ_n), cast back to the global dtype. The coordinate-wise median and trimmed
mean commute with the shift by θ and Krum's pairwise distances are the same for states and
deltas, so this equals aggregating the client states (up to float rounding). Krum flattens
each client's delta over all keys (sorted by name) into one vector. Robust rules ignore
``num_samples`` (a Byzantine client could inflate it): every client counts once. Stateless.

    median        Δ = coordinate-wise median over clients (mean of the two middle values
                  when n is even).
    trimmed_mean  per coordinate, drop the k = floor(beta * n) largest and k smallest values
                  and average the n − 2k left (beta = 0 is the plain mean).
    krum          score_i = sum of the squared distances from Δ_i to its n − f − 2 nearest
                  other deltas; Krum takes the Δ with the lowest score, multi-Krum (m > 1)
                  averages the m lowest-scored ones. Needs n > 2f + 2 clients in the round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field

from fedumm.errors import ConfigError
from fedumm.strategies.base import ClientUpdate, State, Strategy, StrategyParams, deltas


def _apply(global_state: State, aggregated: State) -> State:
    return {k: (v.float() + aggregated[k]).to(v.dtype) for k, v in global_state.items()}


def coordinate_median(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Median over the first axis of the stacked values; the mean of the two middle ones
    for an even count (torch.median would return the lower one)."""
    stacked = torch.stack([v.float() for v in values]).sort(dim=0).values
    n = stacked.shape[0]
    if n % 2:
        return stacked[n // 2]
    return (stacked[n // 2 - 1] + stacked[n // 2]) / 2


def trimmed_mean(values: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
    """Per coordinate: drop the floor(beta n) largest and smallest values, average the rest."""
    n = len(values)
    k = trim_count(n, beta)
    stacked = torch.stack([v.float() for v in values]).sort(dim=0).values
    return stacked[k : n - k].mean(dim=0)


def trim_count(n: int, beta: float) -> int:
    if not 0 <= beta < 0.5:
        raise ValueError(f"trim fraction beta must be in [0, 0.5), got {beta}")
    return math.floor(beta * n + 1e-9)  # 0.3 * 10 is 2.9999999999999996 in floating point


def krum_scores(vectors: Sequence[torch.Tensor], f: int) -> list[float]:
    """score_i = sum of the n − f − 2 smallest squared distances ||x_i − x_j||², j ≠ i."""
    n = len(vectors)
    if n <= 2 * f + 2:
        raise ValueError(f"Krum needs n > 2f + 2 clients: n = {n}, f = {f}")
    dist = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = (vectors[i].double() - vectors[j].double()).pow(2).sum()
    closest = n - f - 2
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores.append(float(others.sort().values[:closest].sum()))
    return scores


def flatten(state: State) -> torch.Tensor:
    return torch.cat([state[k].float().reshape(-1) for k in sorted(state)])


class Median(Strategy):
    name = "median"
    needs_individual_updates = "a robust aggregator ranks each client's own update"

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        client_deltas = deltas(global_state, updates)
        return _apply(global_state, {k: coordinate_median([d[k] for d in client_deltas]) for k in global_state})


class TrimmedMeanParams(StrategyParams):
    beta: float = Field(
        0.25,
        ge=0,
        lt=0.5,
        description="Fraction trimmed from EACH side per coordinate: floor(beta * n) values (0 = mean).",
    )


class TrimmedMean(Strategy):
    name = "trimmed_mean"
    needs_individual_updates = "a robust aggregator ranks each client's own update"
    Params = TrimmedMeanParams

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        client_deltas = deltas(global_state, updates)
        beta = self.params.beta
        return _apply(global_state, {k: trimmed_mean([d[k] for d in client_deltas], beta) for k in global_state})


class KrumParams(StrategyParams):
    f: int | None = Field(
        None,
        ge=0,
        description="Assumed Byzantine clients f; each round needs n > 2f + 2 clients. "
        "null = the largest f the round's n allows, floor((n - 3) / 2).",
    )
    m: int = Field(1, ge=1, description="Deltas selected and averaged (1 = Krum, > 1 = multi-Krum); m <= n - f.")


class Krum(Strategy):
    name = "krum"
    needs_individual_updates = "a robust aggregator ranks each client's own update"
    Params = KrumParams

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.last_selected: list[int] = []  # client ids chosen in the latest round (not server state)

    @staticmethod
    def _byzantine_count(params: KrumParams, n: int) -> int:
        f = params.f if params.f is not None else max(0, (n - 3) // 2)
        if n <= 2 * f + 2:
            raise ConfigError(
                f"federation.strategy.f: Krum with f = {f} needs more than 2f + 2 = {2 * f + 2} clients "
                f"per round, got {n}; lower f or sample more clients"
            )
        if params.m > n - f:
            raise ConfigError(
                f"federation.strategy.m: multi-Krum selects m = {params.m} of n - f = {n - f} "
                f"(n = {n} clients this round, f = {f}); lower m"
            )
        return f

    def min_updates(self) -> int:
        for n in range(1, self.num_clients + 2 * (self.params.f or 0) + self.params.m + 4):
            try:
                self._byzantine_count(self.params, n)
                return n
            except ConfigError:
                continue  # too few for this f and m: try one more
        return self.num_clients + 1  # never satisfiable with these clients

    def byzantine_count(self, n: int) -> int:
        return self._byzantine_count(self.params, n)

    @classmethod
    def check_config(cls, params, config) -> None:
        # Every round samples the same number of clients, so round 1 would fail the same way.
        n = config.federation.clients_per_round()
        try:
            cls._byzantine_count(params, n)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (federation.num_clients = {config.federation.num_clients}, "
                f"fraction_fit = {config.federation.fraction_fit})"
            ) from None

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        client_deltas = deltas(global_state, updates)
        f = self.byzantine_count(len(updates))
        scores = krum_scores([flatten(d) for d in client_deltas], f)
        order = sorted(range(len(updates)), key=lambda i: (scores[i], i))
        chosen = order[: self.params.m]
        self.last_selected = [updates[i].client_id for i in chosen]
        mean = {k: torch.stack([client_deltas[i][k] for i in chosen]).mean(dim=0) for k in global_state}
        return _apply(global_state, mean)
