"""Secure aggregation in the round loop (``privacy.secure_aggregation``), the same in every engine.

After ``fit`` a client holds its update and replies with its counts only; the server then runs
the protocol of ``fedumm.privacy.secagg`` through ``Transport.exchange`` and learns one vector:
the sum over the surviving clients of

    [ w_k · Δ_k (the trained units, flattened in sorted key order) | w_k | b_k ]

with w_k = n_k / s (s: the largest sample count a client may claim, sent in the broadcast) for
sample-weighted FedAvg, or w_k = 1 and Δ_k clipped and noised under client-level DP (the
noisy count b_k of unclipped updates only with ``clip_norm: adaptive``). The strategy then
takes the mean update Σ w_k Δ_k / Σ w_k (DP: / q·N) as one pre-aggregated update.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedumm.config import SecureAggregationConfig
from fedumm.errors import AggregationError
from fedumm.federation.privacy import PrivacyPlan
from fedumm.privacy.secagg import Exchange, SecAggParams, secure_sum
from fedumm.types import State

SAMPLE_SCALE_KEY = "secagg/sample_scale"


def pack(delta: Mapping[str, torch.Tensor], weight: float, unclipped: float | None) -> np.ndarray:
    """The vector a client contributes (see the module docstring)."""
    parts = [delta[k].detach().double().flatten().numpy() * weight for k in sorted(delta)]
    tail = [weight] + ([unclipped] if unclipped is not None else [])
    return np.concatenate([*parts, np.asarray(tail, dtype=np.float64)])


def vector_size(shapes: Mapping[str, tuple[int, ...]], adaptive: bool) -> int:
    return sum(int(np.prod(s)) for s in shapes.values()) + 1 + int(adaptive)


def unpack(total: np.ndarray, shapes: Mapping[str, tuple[int, ...]], adaptive: bool) -> tuple[State, float, float]:
    """(Σ w_k Δ_k per key, Σ w_k, Σ b_k) from the unmasked sum."""
    out: State = {}
    offset = 0
    for key in sorted(shapes):
        size = int(np.prod(shapes[key]))
        out[key] = torch.from_numpy(total[offset : offset + size].reshape(shapes[key])).float()
        offset += size
    weights = float(total[offset])
    unclipped = float(total[offset + 1]) if adaptive else 0.0
    return out, weights, unclipped


@dataclass
class SecureRound:
    """What one secure round did (for the round's record)."""

    mean: State | None  # the mean update; None when the protocol failed
    survivors: list[int] = field(default_factory=list)
    unclipped: float = 0.0
    error: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


class SecureAggregator:
    """The server's side of a secure round: parameters, the protocol over the transport, the mean."""

    def __init__(self, config: SecureAggregationConfig, plan: PrivacyPlan | None):
        self.config = config
        self.plan = plan  # client-level DP under secure aggregation (distributed noise), else None

    def extras(self, sample_caps: Mapping[int, int]) -> State:
        """What clients need to build their vector: the weight scale s."""
        scale = max(sample_caps.values(), default=1)
        return {SAMPLE_SCALE_KEY: torch.tensor([float(scale)])}

    def run(
        self, exchange: Exchange, clients: Sequence[int], shapes: Mapping[str, tuple[int, ...]], round_num: int
    ) -> SecureRound:
        """The protocol with ``clients`` (the round's accepted replies) through ``exchange``
        (``Transport.exchange`` of this round)."""
        adaptive = self.plan is not None and self.plan.adaptive
        params = SecAggParams(
            clients=tuple(sorted(clients)),
            threshold=self.config.threshold,
            vector_size=vector_size(shapes, adaptive),
            clipping_range=self.config.clipping_range,
            quantization_bits=self.config.quantization_bits,
            round_num=round_num,
        )
        start = time.perf_counter()
        try:
            result = secure_sum(params, exchange)
        except AggregationError as exc:
            return SecureRound(None, error=f"secure aggregation: {exc}")
        total, weights, unclipped = unpack(result.total, shapes, adaptive)
        record = {
            "survivors": len(result.survivors),
            "dropped": result.dropped,
            "bytes_up": result.bytes_up,
            "bytes_down": result.bytes_down,
            "seconds": time.perf_counter() - start,
        }
        divisor = self.plan.expected if self.plan is not None else weights
        if divisor <= 0:
            return SecureRound(None, error=f"secure aggregation: the weights sum to {weights:.4g}", record=record)
        mean = {k: v / divisor for k, v in total.items()}
        return SecureRound(mean, list(result.survivors), unclipped, record=record)
