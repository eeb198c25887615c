"""Server aggregation strategies, one algorithm per file."""

from __future__ import annotations

from fedumm.config import StrategyConfig
from fedumm.strategies.base import ClientUpdate, State, Strategy, weighted_average
from fedumm.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {FedAvg.name: FedAvg}


def build_strategy(config: StrategyConfig) -> Strategy:
    return STRATEGIES[config.name]()


__all__ = ["ClientUpdate", "FedAvg", "State", "Strategy", "build_strategy", "weighted_average"]
