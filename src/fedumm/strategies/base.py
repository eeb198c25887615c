"""Strategy interface and the shared numeric core of aggregation.

A strategy is pure arithmetic over ``dict[str, Tensor]`` keyed by canonical adapter names,
plus explicit server state returned by ``state_dict`` (saved with checkpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedumm.adapters import check_state_matches

State = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """What one client returns after local training in one round."""

    client_id: int
    num_samples: int
    state: State  # the client's adapter tensors after training (weights, not deltas)
    metrics: dict[str, float] = field(default_factory=dict)


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """sum_k w_k * state_k / sum_k w_k, accumulated in float32 and cast back per key."""
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        check_state_matches(reference, state, f"client state {i} does not match client state 0")
    out: State = {}
    for key, ref in reference.items():
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for state, weight in zip(states, weights):
            acc.add_(state[key].to(torch.float32), alpha=weight / total)
        out[key] = acc.to(ref.dtype)
    return out


class Strategy(ABC):
    """Server-side aggregation. Subclasses keep any server state as tensors in ``state_dict``."""

    name: str

    @abstractmethod
    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        """New global adapter state from the current one and this round's client updates."""

    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no server state, got keys {sorted(state)[:3]}")
