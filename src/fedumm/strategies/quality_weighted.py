"""Quality-weighted aggregation from Su et al. 2026, "FedUMM: A General Framework for Federated
Learning with Unified Multimodal Models" (arXiv:2601.15390).

FedAvg whose weights also reward clients whose locally trained model validates well:
    w_k ∝ (n_k / sum_j n_j) * max(q_k, epsilon),    renormalised so sum_k w_k = 1,
    θ <- sum_k w_k θ_k
with n_k the client's training samples and q_k its local validation score, read from the
client's metrics (``metrics[metric]``, default ``local_vqa_accuracy``: the client's adapter
after local training, scored on its local test split; clients report it when
``eval.clients`` is on and they hold a local test split). The floor epsilon keeps every
client in the average and makes all-zero scores (e.g. an untrained first round) fall back to
plain sample weighting. Stateless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from fedumm.adapters import check_state_matches
from fedumm.errors import ConfigError
from fedumm.strategies.base import ClientUpdate, State, Strategy, StrategyParams, weighted_average


def quality_weights(updates: Sequence[ClientUpdate], metric: str, epsilon: float) -> list[float]:
    """Normalised w_k = n_k max(q_k, epsilon) / sum_j n_j max(q_j, epsilon)."""
    raw = []
    for update in updates:
        if metric not in update.metrics:
            have = ", ".join(sorted(update.metrics)) or "none"
            raise ConfigError(
                f"quality_weighted: client {update.client_id} reported no {metric!r} metric (it reported: {have}); "
                "this strategy weights clients by their local validation score: enable eval.clients=true and keep "
                "data.local_test_fraction > 0, or set federation.strategy.metric to a metric the clients report"
            )
        score = float(update.metrics[metric])
        if not math.isfinite(score) or score < 0:
            raise ValueError(f"quality_weighted: client {update.client_id} {metric}={score} is not a finite score >= 0")
        if update.num_samples < 0:
            raise ValueError(f"quality_weighted: client {update.client_id} has {update.num_samples} samples")
        raw.append(float(update.num_samples) * max(score, epsilon))
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"quality_weighted: all clients have zero samples ({[u.num_samples for u in updates]})")
    return [w / total for w in raw]


class QualityWeightedParams(StrategyParams):
    metric: str = Field(
        "local_vqa_accuracy", min_length=1,
        description="Client metric used as quality score q_k (clients report local_vqa_accuracy with eval.clients).",
    )
    epsilon: float = Field(
        0.01, gt=0, le=1, description="Floor on q_k: all-zero scores fall back to sample weighting."
    )


class QualityWeighted(Strategy):
    name = "quality_weighted"
    Params = QualityWeightedParams

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        for update in updates:
            check_state_matches(global_state, update.state, f"client {update.client_id} state")
        weights = quality_weights(updates, self.params.metric, self.params.epsilon)
        return weighted_average([u.state for u in updates], weights)
