"""Helpers shared by the strategies that keep server state or step on the mean delta
(FedAvgM, FedOpt). Not an algorithm; candidates for ``base.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedumm.strategies.base import ClientUpdate, State, deltas, sample_weights, weighted_average
from fedumm.types import check_state_matches


def mean_delta(global_state: State, updates: Sequence[ClientUpdate], weighted: bool = True) -> State:
    """Mean client delta Δ = sum_k w_k (θ_k − θ) / sum_k w_k in float32, keys checked first;
    w_k = n_k (sample counts) when ``weighted``, else 1 (the plain mean)."""
    weights = sample_weights(updates) if weighted else [1.0] * len(updates)
    return weighted_average(deltas(global_state, updates), weights)


def check_known_shapes(global_state: State, state: State, what: str) -> None:
    """The keys of ``state`` already created for this round's tensors must match their shapes."""
    known = {k: state[k] for k in global_state if k in state}
    check_state_matches({k: global_state[k] for k in known}, known, what)


def check_per_key_state(
    reference: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str, shapes: bool = True
) -> None:
    """Restored per-tensor server state: every key is a tensor of the global adapter
    (``reference``), of its shape when ``shapes``. Keys not created yet are fine (lazy state)."""
    unknown = sorted(set(state) - set(reference))
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise ValueError(f"{what}: key {unknown[0]!r}{more} is not a tensor of the global adapter")
    if shapes:
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(reference[key].shape):
                raise ValueError(
                    f"{what}: shape mismatch for {key!r}: got {tuple(tensor.shape)}, "
                    f"expected {tuple(reference[key].shape)}"
                )


def split_prefixed(state: Mapping[str, torch.Tensor], prefixes: Sequence[str], who: str) -> dict[str, State]:
    """``{prefix + key: tensor}`` -> one float32 dict per prefix; unknown prefixes are errors."""
    parts: dict[str, State] = {p: {} for p in prefixes}
    for name, tensor in state.items():
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"{who}: unexpected server state key {name!r} (expected prefixes {list(prefixes)})")
        parts[prefix][name[len(prefix) :]] = tensor.detach().to(torch.float32).clone()
    return parts
