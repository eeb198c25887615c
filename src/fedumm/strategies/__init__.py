"""Server aggregation strategies, one algorithm per file.

``STRATEGIES`` maps a config name to its class; each class carries a ``Params`` model whose
fields are the keys allowed next to ``name`` under ``federation.strategy``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fedumm.errors import ConfigError
from fedumm.strategies.base import (
    ClientAlgorithm,
    ClientUpdate,
    LocalContext,
    State,
    Strategy,
    StrategyParams,
    weighted_average,
)
from fedumm.strategies.fedavg import FedAvg
from fedumm.strategies.fedavgm import FedAvgM
from fedumm.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedumm.strategies.fedprox import FedProx
from fedumm.strategies.flexlora import FlexLoRA
from fedumm.strategies.flora import FLoRA
from fedumm.strategies.hetlora import HetLoRA
from fedumm.strategies.mean import OneShotMean
from fedumm.strategies.ot_align import OTAlign
from fedumm.strategies.quality_weighted import QualityWeighted
from fedumm.strategies.robust import Krum, Median, TrimmedMean
from fedumm.strategies.scaffold import Scaffold
from fedumm.strategies.sign_conflict import SignConflict
from fedumm.strategies.yoco import YOCO

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        Scaffold,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        QualityWeighted,
        Median,
        TrimmedMean,
        Krum,
        HetLoRA,
        FlexLoRA,
        FLoRA,
        OneShotMean,
        SignConflict,
        OTAlign,
        YOCO,
    )
}


def validate_params(name: str, values: dict[str, Any]) -> StrategyParams:
    """Typed params for strategy ``name``; errors name ``federation.strategy.<key>``."""
    if name not in STRATEGIES:
        raise ConfigError(
            f"federation.strategy.name: unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}"
        )
    try:
        return STRATEGIES[name].Params.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key for this strategy" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"federation.strategy.{key}: {msg}")
        raise ConfigError("; ".join(problems)) from None


def build_strategy(config, num_clients: int, task: str | None = None) -> Strategy:
    """Strategy from a ``StrategyConfig`` (name + its params); ``task`` (eval.task) fills
    run-dependent defaults such as quality_weighted's metric."""
    cls = STRATEGIES[config.name]
    params = cls.resolve_params(validate_params(config.name, config.params()), task)
    return cls(params, num_clients=num_clients)


def check_strategy_config(run_config) -> None:
    """The strategy's requirements on the rest of a ``RunConfig`` (ConfigError naming the key)."""
    strategy = run_config.federation.strategy
    STRATEGIES[strategy.name].check_config(validate_params(strategy.name, strategy.params()), run_config)


__all__ = [
    "STRATEGIES",
    "ClientAlgorithm",
    "ClientUpdate",
    "LocalContext",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "FLoRA",
    "FlexLoRA",
    "HetLoRA",
    "Krum",
    "Median",
    "QualityWeighted",
    "Scaffold",
    "State",
    "Strategy",
    "StrategyParams",
    "TrimmedMean",
    "build_strategy",
    "check_strategy_config",
    "validate_params",
    "weighted_average",
]
