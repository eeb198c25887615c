"""LoRA factor arithmetic shared by the heterogeneous-rank rules (HetLoRA, FlexLoRA, FLoRA) and
the model host. Not an algorithm.

A LoRA module ``m`` holds ``A = m.lora_A.weight`` (r x d_in) and ``B = m.lora_B.weight``
(d_out x r); its update is ΔW = s · B A with s = adapter.alpha / adapter.r. A client of rank
r_k < R (the host's adapter.r) uses the first r_k components: rows of A, columns of B.
``truncate`` cuts a rank-R state to r_k, ``pad`` puts r_k factors back at R with zeros, which
leaves every product B A unchanged. Keys that are not LoRA factors pass through both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedumm.types import State

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


def module_of(key: str) -> str | None:
    """The LoRA module a factor key belongs to (``...q_proj`` of ``...q_proj.lora_A.weight``)."""
    for suffix in (A_SUFFIX, B_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def lora_modules(keys: Sequence[str] | Mapping[str, object]) -> list[str]:
    """Every LoRA module with an A or a B factor among ``keys``, sorted."""
    return sorted({m for k in keys if (m := module_of(k)) is not None})


def factor_rank(key: str, shape: Sequence[int]) -> int | None:
    """The rank a factor of this shape has (rows of A, columns of B); None for other keys."""
    if key.endswith(A_SUFFIX):
        return int(shape[0])
    if key.endswith(B_SUFFIX):
        return int(shape[1])
    return None


def state_rank(state: Mapping[str, torch.Tensor | Sequence[int]]) -> int | None:
    """The one rank of every LoRA factor in ``state`` (None: no factor); factors of different
    ranks are a ValueError naming one of each."""
    ranks: dict[int, str] = {}
    for key, value in state.items():
        shape = value.shape if isinstance(value, torch.Tensor) else tuple(value)
        rank = factor_rank(key, shape)
        if rank is not None:
            ranks.setdefault(rank, key)
    if len(ranks) > 1:
        shown = ", ".join(f"{k!r} has rank {r}" for r, k in sorted(ranks.items())[:2])
        raise ValueError(f"LoRA factors of different ranks in one state: {shown}")
    return next(iter(ranks), None)


def truncate(state: Mapping[str, torch.Tensor], rank: int) -> State:
    """The first ``rank`` components: A[:rank], B[:, :rank] (copies); other keys unchanged."""
    out: State = {}
    for key, value in state.items():
        if key.endswith(A_SUFFIX):
            value = value[:rank]
        elif key.endswith(B_SUFFIX):
            value = value[:, :rank]
        out[key] = value.clone()
    return out


def pad(state: Mapping[str, torch.Tensor], rank: int) -> State:
    """Factors zero-padded to ``rank`` components (A: rows, B: columns); other keys unchanged."""
    out: State = {}
    for key, value in state.items():
        have = factor_rank(key, value.shape)
        if have is None or have == rank:
            out[key] = value.clone()
            continue
        if have > rank:
            raise ValueError(f"{key!r} has rank {have}, above the {rank} it would be padded to")
        if key.endswith(A_SUFFIX):
            out[key] = torch.cat([value, value.new_zeros(rank - have, value.shape[1])], dim=0)
        else:
            out[key] = torch.cat([value, value.new_zeros(value.shape[0], rank - have)], dim=1)
    return out


def rank_shapes(shapes: Mapping[str, Sequence[int]], rank: int) -> dict[str, tuple[int, ...]]:
    """``shapes`` (of a rank-R state) as a rank-``rank`` state has them."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        shape = tuple(shape)
        if key.endswith(A_SUFFIX):
            shape = (rank, *shape[1:])
        elif key.endswith(B_SUFFIX):
            shape = (shape[0], rank, *shape[2:])
        out[key] = shape
    return out


def product(state: Mapping[str, torch.Tensor], module: str) -> torch.Tensor:
    """B A of one module, in float32 (without the LoRA scale s)."""
    return state[module + B_SUFFIX].float() @ state[module + A_SUFFIX].float()


def split_svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) of rank ``rank`` with B A the best rank-``rank`` approximation of ``delta``
    (Eckart-Young): delta = U S V^T, B = U_r S_r^½, A = S_r^½ V_r^T, so the singular values are
    shared evenly between the factors. Components beyond delta's own rank are zero."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    b = delta.new_zeros(delta.shape[0], rank, dtype=torch.float32)
    a = delta.new_zeros(rank, delta.shape[1], dtype=torch.float32)
    b[:, :keep] = u[:, :keep] * root
    a[:keep] = root[:, None] * vh[:keep]
    return b, a


def non_factor_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of ``state`` that are not LoRA factors (modules_to_save, in-place groups)."""
    return [k for k in state if module_of(k) is None]


#: Extras keys of a message that carry a strategy's dense frozen ΔW per LoRA module (FLoRA).
FROZEN_DELTA_PREFIX = "frozen_delta/"
