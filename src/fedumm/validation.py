"""The one validation step after parsing: the config checks that need a registry.

``fedumm.config`` only declares sections and their own field checks; what needs to know
the registered backends, strategies and tasks runs here, on the parsed ``RunConfig``,
before any data or model loads. ``load_run_config`` is the entry point every command,
engine and site uses.
"""

from __future__ import annotations

from pathlib import Path

from fedumm.config import RunConfig, load_config
from fedumm.errors import ConfigError
from fedumm.finetune import STANDARD_UNITS
from fedumm.models.registry import available_backends, get_backend
from fedumm.strategies import STRATEGIES, check_strategy_config, validate_params


def _check_backend(config: RunConfig) -> None:
    if config.model.backend not in available_backends():
        raise ConfigError(
            f"model.backend: unknown backend {config.model.backend!r}; available: {', '.join(available_backends())}"
        )


def _check_finetune_groups(config: RunConfig) -> None:
    """finetune.groups names lora or one of the backend's module groups."""
    backend = config.model.backend
    known = list(dict.fromkeys(("lora", *STANDARD_UNITS, *get_backend(backend).group_names())))
    for name in config.finetune.groups:
        if name not in known:
            raise ConfigError(f"finetune.groups.{name}: not a unit of backend {backend}; known: {', '.join(known)}")


def _check_strategy(config: RunConfig) -> None:
    strategy = config.federation.strategy
    validate_params(strategy.name, strategy.params())
    check_strategy_config(config)


def _check_privacy(config: RunConfig) -> None:
    """Combinations that would void the privacy guarantee, or cannot run, refused with the reason."""
    privacy, federation = config.privacy, config.federation
    secure = privacy.secure_aggregation
    if privacy.level == "client" or secure is not None:
        what = "privacy.secure_aggregation" if privacy.level != "client" else "privacy.level=client"
        reason = STRATEGIES[federation.strategy.name].needs_individual_updates
        if reason is not None:
            raise ConfigError(
                f"federation.strategy.name={federation.strategy.name}: not with {what}: {reason}; use fedavg, "
                "fedavgm, fedprox or the FedOpt family (fedadam, fedyogi, fedadagrad)"
            )
    adaptive = privacy.level == "client" and privacy.clip_norm == "adaptive"
    if adaptive and privacy.mechanism == "central" and privacy.noise_multiplier is not None:
        count_stddev = privacy.clipped_count_stddev or federation.fraction_fit * federation.num_clients / 20
        if 2 * count_stddev <= privacy.noise_multiplier:
            raise ConfigError(
                f"privacy.clipped_count_stddev ({count_stddev:g}) must exceed noise_multiplier / 2 "
                f"({privacy.noise_multiplier / 2:g}) or the count alone spends the whole budget (default: "
                "fraction_fit x num_clients / 20)"
            )
    if adaptive and privacy.mechanism == "local":
        raise ConfigError(
            "privacy.clip_norm=adaptive: not with privacy.mechanism=local (each client's clipped-or-not bit would "
            "leave the site without noise); give a number"
        )
    if secure is None:
        return
    if federation.validation.max_update_norm is not None:
        raise ConfigError(
            "federation.validation.max_update_norm: not with privacy.secure_aggregation (the server never sees an "
            "individual update; privacy.secure_aggregation.clipping_range bounds each coordinate instead)"
        )
    round_size = federation.clients_per_round()
    if secure.threshold > round_size:
        raise ConfigError(
            f"privacy.secure_aggregation.threshold ({secure.threshold}) exceeds the clients per round ({round_size}: "
            "federation.fraction_fit x num_clients): no round could finish"
        )


#: Run in order; each raises ``ConfigError`` naming its key.
CHECKS = (_check_backend, _check_finetune_groups, _check_strategy, _check_privacy)


def validate(config: RunConfig, source: str = "<config>") -> RunConfig:
    """Run every registry check on ``config``; the first problem is raised as one line."""
    for check in CHECKS:
        try:
            check(config)
        except ConfigError as exc:
            raise ConfigError(f"invalid config {source}: {exc}") from None
    return config


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """``fedumm.config.load_config`` (YAML + ``--set``, section checks), then ``validate``."""
    config = load_config(path, overrides)
    return validate(config, str(path) if path is not None else "<defaults>")
