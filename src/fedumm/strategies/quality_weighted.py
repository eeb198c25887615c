"""Quality-weighted aggregation from Su et al. 2026, "FedUMM: A General Framework for Federated
Learning with Unified Multimodal Models" (arXiv:2601.15390).

FedAvg whose weights also reward clients whose locally trained model validates well:
    w_k ∝ (n_k / sum_j n_j) * max(q_k, epsilon),    renormalised so sum_k w_k = 1,
    θ <- sum_k w_k θ_k
with n_k the client's training samples and q_k its local validation score, read from the
client's metrics (``metrics[metric]``; default ``local_<primary metric of eval.task>``, e.g.
``local_vqa_accuracy``, ``local_accuracy``: the client's adapter after local training, scored
on its local test split; clients report it when ``eval.clients`` is on, which the config
check requires). The floor epsilon keeps every client in the average and makes all-zero
scores (e.g. an untrained first round) fall back to plain sample weighting.

A client with an empty local test split reports no score. ``missing_score=mean`` (default)
gives it the mean q of the round's scored clients (q = 1 for all when none is scored:
sample weighting); ``missing_score=error`` stops the round. Stateless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from fedumm.errors import ConfigError
from fedumm.metrics import primary_metric_of
from fedumm.strategies.base import ClientUpdate, State, Strategy, StrategyParams, check_updates, weighted_average


def quality_weights(
    updates: Sequence[ClientUpdate], metric: str, epsilon: float, missing_score: str = "error"
) -> list[float]:
    """Normalised w_k = n_k max(q_k, epsilon) / sum_j n_j max(q_j, epsilon); a client without
    ``metric`` is an error, or (``missing_score="mean"``) scores the mean of the others."""
    scores: list[float | None] = []
    for update in updates:
        if update.num_samples < 0:
            raise ValueError(f"quality_weighted: client {update.client_id} has {update.num_samples} samples")
        if metric not in update.metrics:
            if missing_score == "mean":
                scores.append(None)
                continue
            have = ", ".join(sorted(update.metrics)) or "none"
            raise ConfigError(
                f"quality_weighted: client {update.client_id} reported no {metric!r} metric (it reported: {have}); "
                "this strategy weights clients by their local validation score: enable eval.clients=true and keep "
                "data.local_test_fraction > 0 (a client with an empty local test split reports none: "
                "federation.strategy.missing_score=mean scores it with the others' mean), or set "
                "federation.strategy.metric to a metric the clients report"
            )
        score = float(update.metrics[metric])
        if not math.isfinite(score) or score < 0:
            raise ValueError(f"quality_weighted: client {update.client_id} {metric}={score} is not a finite score >= 0")
        scores.append(score)
    known = [q for q in scores if q is not None]
    fill = sum(known) / len(known) if known else 1.0
    raw = [float(u.num_samples) * max(fill if q is None else q, epsilon) for u, q in zip(updates, scores)]
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"quality_weighted: all clients have zero samples ({[u.num_samples for u in updates]})")
    return [w / total for w in raw]


class QualityWeightedParams(StrategyParams):
    metric: str | None = Field(
        None,
        min_length=1,
        description="Client metric used as quality score q_k; null = local_<primary metric of eval.task> "
        "(local_vqa_accuracy, local_accuracy, local_cider_d), which clients report with eval.clients.",
    )
    epsilon: float = Field(0.01, gt=0, le=1, description="Floor on q_k: all-zero scores fall back to sample weighting.")
    missing_score: Literal["mean", "error"] = Field(
        "mean",
        description="A client that reports no score (empty local test split): mean = the mean q of the "
        "round's scored clients; error = stop the run.",
    )


class QualityWeighted(Strategy):
    name = "quality_weighted"
    needs_individual_updates = "it weights each update by its client's self-reported score"
    Params = QualityWeightedParams

    @classmethod
    def check_config(cls, params, config) -> None:
        if not config.eval.clients:
            raise ConfigError(
                "eval.clients: federation.strategy.name=quality_weighted weights clients by their local "
                "validation score; set eval.clients=true"
            )
        if config.data.local_test_fraction == 0:
            raise ConfigError(
                "data.local_test_fraction: federation.strategy.name=quality_weighted needs local test splits "
                "to score clients; set it above 0 (e.g. 0.2)"
            )

    @classmethod
    def resolve_params(cls, params, task):
        if params.metric is None and task is not None:
            return params.model_copy(update={"metric": f"local_{primary_metric_of(task)}"})
        return params

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        if self.params.metric is None:
            raise ValueError(
                "quality_weighted: federation.strategy.metric is null and the task is unknown; "
                "build the strategy with build_strategy(..., task=config.eval.task)"
            )
        check_updates(global_state, updates)
        weights = quality_weights(updates, self.params.metric, self.params.epsilon, self.params.missing_score)
        return weighted_average([u.state for u in updates], weights, like=global_state)
