"""HetLoRA: Cho et al. 2024, "Heterogeneous LoRA for Federated Fine-tuning of On-Device
Foundation Models" (EMNLP), with zero-padding aggregation and local rank self-pruning.

Distribution by truncation: client k of rank r_k receives the first r_k components of the
global rank-R factors, A[:r_k] and B[:, :r_k].

Local rank self-pruning: with the tail T_k = [⌊γ r_k⌋, r_k) of the client's components, local
training minimises F_k + λ Σ_m ||B_{m,T_k} A_{m,T_k}||_F (the norm of the update the last
components make, per LoRA module m). If after training that tail norm is below the one of the
factors the client received, the client prunes: r_k <- max(min_rank, ⌊γ r_k⌋) and sends only the
first r_k components; the server keeps the new rank for the client's later rounds.

Sparsity-weighted zero-padding aggregation: every reply is zero-padded to R, and per module m
    A_m = Σ_k p_{k,m} pad(A_{k,m}),   B_m = Σ_k p_{k,m} pad(B_{k,m}),
    p_{k,m} = ||B_{k,m} A_{k,m}||_F / Σ_j ||B_{j,m} A_{j,m}||_F          (weighting: sparsity)
or p_{k,m} = n_k / Σ_j n_j (weighting: samples). Tensors that are not LoRA factors are averaged
with the sample weights.

The paper's full text was not at hand when this was written (only its abstract and summaries of
its three steps: truncation, rank self-pruning with a decaying factor γ, sparsity-weighted
zero-padding aggregation); the pruning test and its constants follow that description.
Choices the paper leaves open, or that could not be checked against it, named: γ (``decay``),
λ (``reg``) and the floor ``min_rank`` are parameters; the tail norm is summed over the modules
and one rank is kept per client (not per module); the sparsity weights are per module; the
pruning test compares the trained tail with the received one (the global model's tail, i.e. the
previous round's aggregate), so no client prunes in round 1, when the received B is zero. The
norm uses the identity ||B A||_F^2 = Σ (BᵀB) ⊙ (A Aᵀ), which needs no d_out x d_in product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field

from fedumm.lowrank import (
    A_SUFFIX,
    B_SUFFIX,
    lora_modules,
    non_factor_keys,
    pad,
    product,
    state_rank,
    truncate,
)
from fedumm.strategies.base import (
    ClientAlgorithm,
    ClientUpdate,
    State,
    Strategy,
    StrategyParams,
    sample_weights,
    weighted_average,
)
from fedumm.types import LocalHooks

RANKS_KEY = "hetlora/ranks"


def tail_start(rank: int, decay: float) -> int:
    """⌊γ r⌋: the first component of the tail the regulariser acts on (and the pruned rank)."""
    return math.floor(decay * rank)


def tail_norm(factors: Mapping[str, torch.Tensor], modules: Sequence[str], start: int, stop: int) -> torch.Tensor:
    """Σ_m ||B_m[:, start:stop] A_m[start:stop]||_F (differentiable when ``factors`` are parameters)."""
    total = torch.zeros((), dtype=torch.float32)
    for module in modules:
        a = factors[module + A_SUFFIX][start:stop].float()
        b = factors[module + B_SUFFIX][:, start:stop].float()
        squared = ((b.T @ b) * (a @ a.T)).sum()
        total = total.to(squared.device) + (squared.clamp_min(0) + 1e-12).sqrt()
    return total


def pruned_rank(rank: int, decay: float, min_rank: int) -> int:
    return min(rank, max(min_rank, tail_start(rank, decay)))


def aggregate_padded(
    updates: Sequence[ClientUpdate], rank: int, weighting: str, like: Mapping[str, torch.Tensor]
) -> State:
    """The zero-padding aggregate at ``rank`` (see the module docstring)."""
    samples = sample_weights(updates)
    padded = [pad(u.state, rank) for u in updates]
    out: State = {}
    for module in lora_modules(like):
        if weighting == "sparsity":
            weights = [float(torch.linalg.matrix_norm(product(u.state, module))) for u in updates]
            weights = weights if sum(weights) > 0 else samples  # every update zero: no preference
        else:
            weights = samples
        keys = [module + A_SUFFIX, module + B_SUFFIX]
        out.update(weighted_average([{k: p[k] for k in keys} for p in padded], weights, like=like))
    rest = non_factor_keys(like)
    if rest:
        out.update(weighted_average([{k: u.state[k] for k in rest} for u in updates], samples, like=like))
    return out


class _TailRegulariser(LocalHooks):
    def __init__(self, modules: list[str], start: int, stop: int, reg: float):
        self.modules, self.start, self.stop, self.reg = modules, start, stop, reg

    def extra_loss(self, params):
        return self.reg * tail_norm(params, self.modules, self.start, self.stop)


class HetLoRAClient(ClientAlgorithm):
    def __init__(self, decay: float, reg: float, min_rank: int, prune: bool):
        self.decay, self.reg, self.min_rank, self.prune = decay, reg, min_rank, prune

    def _tail(self, global_state: State) -> tuple[list[str], int, int] | None:
        rank = state_rank(global_state)
        if not self.prune or rank is None or pruned_rank(rank, self.decay, self.min_rank) >= rank:
            return None
        return lora_modules(global_state), tail_start(rank, self.decay), rank

    def hooks(self, global_state, server_extras, client_state):
        tail = self._tail(global_state)
        return LocalHooks() if tail is None or self.reg == 0 else _TailRegulariser(*tail, self.reg)

    def reply_state(self, global_state: State, trained_state: State) -> State:
        tail = self._tail(global_state)
        if tail is None:
            return trained_state
        modules, start, stop = tail
        if tail_norm(trained_state, modules, start, stop) < tail_norm(global_state, modules, start, stop):
            return truncate(trained_state, pruned_rank(stop, self.decay, self.min_rank))
        return trained_state


class HetLoRAParams(StrategyParams):
    weighting: Literal["sparsity", "samples"] = Field(
        "sparsity",
        description="sparsity: per module, weights ||B_k A_k||_F (the paper's sparsity-weighted aggregation); "
        "samples: n_k (FedAvg's weights on the zero-padded factors).",
    )
    prune: bool = Field(True, description="Local rank self-pruning.")
    decay: float = Field(0.9, gt=0, lt=1, description="γ: the tail is [⌊γ r⌋, r); a pruning client keeps ⌊γ r⌋.")
    reg: float = Field(0.01, ge=0, description="λ: weight of the tail-norm regulariser in the local loss.")
    min_rank: int = Field(1, ge=1, description="No client is pruned below this rank.")


class HetLoRA(Strategy):
    name = "hetlora"
    rank_aware = True
    needs_individual_updates = "zero-padding needs each client's factors at its own rank"
    Params = HetLoRAParams

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.configured: dict[int, int] = {}  # adapter.client_ranks: the ceiling of a pruned rank

    def set_client_ranks(self, ranks: Mapping[int, int]) -> None:
        super().set_client_ranks(ranks)
        self.configured = dict(self.ranks)

    def client_algorithm(self) -> ClientAlgorithm:
        p = self.params
        return HetLoRAClient(p.decay, p.reg, p.min_rank, p.prune)

    def reply_ranks(self, client_id: int) -> tuple[int, int] | None:
        rank = self.client_rank(client_id)
        if rank is None:
            return None
        p = self.params
        return (pruned_rank(rank, p.decay, p.min_rank) if p.prune else rank), rank

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        rank = state_rank(global_state)
        new = aggregate_padded(updates, rank or 0, self.params.weighting, global_state)
        for update in updates:
            if update.client_id in self.ranks:
                self.ranks[update.client_id] = state_rank(update.state) or self.ranks[update.client_id]
        return new

    def state_dict(self) -> State:
        if not self.ranks:
            return {}
        return {RANKS_KEY: torch.tensor([self.ranks[c] for c in sorted(self.ranks)], dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], reference: State | None = None) -> None:
        unknown = sorted(set(state) - {RANKS_KEY})
        if unknown:
            raise ValueError(f"{self.name}: unexpected server state key {unknown[0]!r}")
        if RANKS_KEY not in state:
            return
        ranks = state[RANKS_KEY].tolist()
        configured = self.configured
        if len(ranks) != len(configured):
            raise ValueError(f"{self.name}: {len(ranks)} ranks saved; adapter.client_ranks has {len(configured)}")
        clients = sorted(configured)
        bad = [(c, r) for c, r in zip(clients, ranks) if not 1 <= r <= configured[c]]
        if bad:
            raise ValueError(
                f"{self.name}: client {bad[0][0]}'s saved rank {bad[0][1]} is not in [1, {configured[bad[0][0]]}]"
            )
        self.ranks = dict(zip(clients, (int(r) for r in ranks)))
