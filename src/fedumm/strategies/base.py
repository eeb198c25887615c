"""Strategy interface and the shared numeric core of aggregation.

A strategy is pure arithmetic over ``dict[str, Tensor]`` keyed by canonical adapter names,
plus explicit server state returned by ``state_dict`` (saved with checkpoints). Algorithms
that also change the client side (FedProx, SCAFFOLD) supply a ``ClientAlgorithm``; tensors
that travel besides the model (control variates) go in ``extras`` of either message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from fedumm.config_base import Section
from fedumm.types import LocalHooks, State, TrainResult, check_state_matches, state_delta

if TYPE_CHECKING:
    from fedumm.config import RunConfig


@dataclass
class ClientUpdate:
    """What one client returns after local training in one round."""

    client_id: int
    num_samples: int
    state: State  # the client's trained tensors (weights, not deltas), canonical keys
    metrics: dict[str, float] = field(default_factory=dict)
    extras: State = field(default_factory=dict)  # algorithm-specific tensors (e.g. SCAFFOLD's delta c)
    #: Per-task adapters (adapter.per_task): the rows behind each key this round, 0 for a key of an
    #: adapter the client did not train (its tensor is the global one); a key it lacks, or None: num_samples.
    key_samples: dict[str, int] | None = None

    def weight_of(self, key: str) -> float:
        """The sample weight of this update's ``key`` (``key_samples``, else ``num_samples``)."""
        return float((self.key_samples or {}).get(key, self.num_samples))


def check_same_keys(states: Sequence[Mapping[str, torch.Tensor]], what: str = "client state") -> None:
    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        check_state_matches(reference, state, f"{what} {i} does not match {what} 0")


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    like: Mapping[str, torch.Tensor] | None = None,
) -> State:
    """sum_k w_k * state_k / sum_k w_k, accumulated in float32 and cast per key to the dtype of
    ``like`` (the global state: decoded payloads are float32 whatever the model's dtype), else
    to that of states[0]."""
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    check_same_keys(states)
    out: State = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for state, weight in zip(states, weights):
            acc.add_(state[key].to(torch.float32), alpha=weight / total)
        out[key] = acc.to((like[key] if like is not None and key in like else ref).dtype)
    return out


def check_updates(global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> list[State]:
    """The clients' states, each checked against the global state's keys and shapes (naming the
    client); then they hold the same keys as each other too."""
    for update in updates:
        check_state_matches(global_state, update.state, f"client {update.client_id} state")
    return [update.state for update in updates]


def contributor_average(global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> State:
    """Per key, the sample-weighted mean over the updates that trained it (FedUMM's per-modality
    adapters aggregated over their contributors):

        theta[key] = sum_{k in C(key)} n_k(key) theta_k[key] / sum_{k in C(key)} n_k(key),

    with n_k(key) = ``ClientUpdate.weight_of(key)`` and C(key) the updates whose weight is > 0; a
    key nobody trained this round keeps its ``global_state`` value. With no ``key_samples`` this
    is ``weighted_average`` by num_samples. Float32 accumulation, cast to the global dtype."""
    if not updates:
        raise ValueError("contributor_average needs at least one update")
    check_same_keys([u.state for u in updates])
    out: State = {}
    for key, ref in updates[0].state.items():
        weights = [u.weight_of(key) for u in updates]
        if any(w < 0 for w in weights):
            raise ValueError(f"negative sample weight for {key!r}: {weights}")
        total = sum(weights)
        if total == 0:
            out[key] = global_state[key].clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for update, weight in zip(updates, weights):
            if weight:
                acc.add_(update.state[key].to(torch.float32), alpha=weight / total)
        out[key] = acc.to((global_state[key] if key in global_state else ref).dtype)
    return out


def deltas(global_state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> list[State]:
    """Per-client update Δ_k = θ_k − θ_global in float32 (keys checked first)."""
    result = []
    for update in updates:
        check_state_matches(global_state, update.state, f"client {update.client_id} state")
        result.append(state_delta(update.state, global_state))
    return result


def sample_weights(updates: Sequence[ClientUpdate]) -> list[float]:
    return [float(u.num_samples) for u in updates]


#: What marks a LoRA factor in a canonical key (``...q_proj.lora_A.weight``).
LORA_A, LORA_B = ".lora_A.", ".lora_B."


def lora_pairs(keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{module: (A key, B key)}`` for every LoRA layer both of whose factors are in ``keys``."""
    keys = set(keys)
    pairs = {}
    for key in sorted(keys):
        if LORA_A in key:
            b_key = key.replace(LORA_A, LORA_B)
            if b_key in keys:
                pairs[key.split(LORA_A)[0]] = (key, b_key)
    return pairs


@dataclass
class LocalContext:
    """What a client's local update knows besides the messages: the optimizer steps it will take
    (``train.local_steps`` or epochs over its rows) and, for an algorithm whose
    ``needs_base_weights`` is set, the frozen base weight of each trained LoRA layer keyed by
    its LoRA B key (float32, CPU)."""

    total_steps: int
    base_weights: State = field(default_factory=dict)


class ClientAlgorithm:
    """Client half of an algorithm. Stateless; per-client state lives in the ClientRuntime
    (``client_state``, tensors keyed like the global adapter) so it persists across rounds, is
    checkpointed, and is never shared between clients."""

    #: ``local_hooks`` reads ``LocalContext.base_weights`` (the frozen weights under the LoRA layers).
    needs_base_weights: ClassVar[bool] = False

    def hooks(self, global_state: State, server_extras: State, client_state: State) -> LocalHooks:
        return LocalHooks()

    def local_hooks(
        self, global_state: State, server_extras: State, client_state: State, context: LocalContext
    ) -> LocalHooks:
        """The hooks of one local update; an algorithm that needs ``context`` overrides this."""
        return self.hooks(global_state, server_extras, client_state)

    def finish(
        self,
        global_state: State,
        trained_state: State,
        server_extras: State,
        client_state: State,
        result: TrainResult,
        lr: float,
    ) -> tuple[State, State]:
        """(extras for the server, new client state) after local training."""
        return {}, client_state

    def reply_state(self, global_state: State, trained_state: State) -> State:
        """The trained tensors the client sends (HetLoRA: cut to a self-pruned rank)."""
        return trained_state


class StrategyParams(Section):
    """Hyperparameters of a strategy; subclasses add fields (validated with the config)."""


class Strategy(ABC):
    """Server-side aggregation. Subclasses keep any server state as tensors in ``state_dict``."""

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    #: Why the strategy needs each client's own update (None: its step depends on the clients only
    #: through their weighted mean update, so it runs on one pre-aggregated update under
    #: differential privacy and secure aggregation).
    needs_individual_updates: ClassVar[str | None] = None
    #: The rule aggregates LoRA factors of different ranks (adapter.client_ranks below adapter.r).
    rank_aware: ClassVar[bool] = False
    #: The rule weighs each key by the updates that trained it (``ClientUpdate.key_samples``), as
    #: adapter.per_task needs; a rule without it would average untrained adapters in.
    per_key_weights: ClassVar[bool] = False
    #: The federation.mode values it runs in (a one-shot combiner: one_shot only).
    modes: ClassVar[tuple[str, ...]] = ("rounds",)

    def __init__(self, params: StrategyParams | None = None, num_clients: int = 1):
        self.params = params if params is not None else self.Params()
        self.num_clients = num_clients
        #: Client id -> the LoRA rank it trains at (adapter.client_ranks); empty: every client at
        #: the host's rank, and the global state travels whole.
        self.ranks: dict[int, int] = {}

    def set_client_ranks(self, ranks: Mapping[int, int]) -> None:
        self.ranks = {int(c): int(r) for c, r in ranks.items()}

    def client_rank(self, client_id: int) -> int | None:
        """The rank client ``client_id`` receives the global adapter at (None: the whole state)."""
        return self.ranks.get(client_id)

    def reply_ranks(self, client_id: int) -> tuple[int, int] | None:
        """(lowest, highest) LoRA rank a reply of ``client_id`` may carry; None: the global shapes."""
        rank = self.client_rank(client_id)
        return None if rank is None else (rank, rank)

    def frozen_delta(self) -> State:
        """Dense per-module ΔW (key: the LoRA module, e.g. ``...q_proj``; without the LoRA scale)
        the global model adds to its frozen base weights besides the LoRA factors (FLoRA's merged
        stack); empty for every other rule."""
        return {}

    @classmethod
    def check_config(cls, params: StrategyParams, config: RunConfig) -> None:
        """Requirements on the rest of the run config, checked before anything loads; raise
        ``ConfigError`` naming the key. ``config.federation.clients_per_round()`` is the round size."""

    @classmethod
    def resolve_params(cls, params: StrategyParams, task: str | None) -> StrategyParams:
        """Fill params whose default depends on the run (``task``: eval.task, None if unknown)."""
        return params

    @abstractmethod
    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        """New global state from the current one and this round's client updates.

        ``global_state`` holds exactly the keys the clients trained this round."""

    def min_updates(self) -> int:
        """The fewest updates a round must bring for ``aggregate`` to be defined (Krum: 2f + 3);
        a round with fewer keeps its global state, like one below federation.min_fit_clients."""
        return 1

    def server_extras(self, global_state: State, round_num: int) -> State:
        """Tensors sent to every sampled client besides the global state."""
        return {}

    def client_algorithm(self) -> ClientAlgorithm:
        return ClientAlgorithm()

    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], reference: State | None = None) -> None:
        """Restore ``state_dict()``; foreign keys are errors. ``reference`` (the global adapter
        state) when given: per-tensor state must name its keys, with its shapes."""
        if state:
            raise ValueError(f"{self.name} keeps no server state, got keys {sorted(state)[:3]}")
