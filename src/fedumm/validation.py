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
from fedumm.finetune import STANDARD_UNITS, units_over_run
from fedumm.models.generation import T2I
from fedumm.models.registry import available_backends, get_backend
from fedumm.strategies import STRATEGIES, check_strategy_config, validate_params


def _check_backend(config: RunConfig) -> None:
    """model.backend is registered, and generates images where the run scores text-to-image rows."""
    if config.model.backend not in available_backends():
        raise ConfigError(
            f"model.backend: unknown backend {config.model.backend!r}; available: {', '.join(available_backends())}"
        )
    # A multitask run without eval.task_weights names every task, t2i among them, without asking for it.
    named = [config.eval.task, *(config.eval.task_weights or {})]
    if T2I in named and not get_backend(config.model.backend).supports_generation:
        generating = [name for name in available_backends() if get_backend(name).supports_generation]
        raise ConfigError(
            f"eval.task: scoring text-to-image rows (t2i) needs a backend that generates images "
            f"({', '.join(generating)}); model.backend is {config.model.backend!r}"
        )
    if config.eval.geneval_prompts is not None and not get_backend(config.model.backend).supports_generation:
        raise ConfigError(
            f"eval.geneval_prompts: drawing images for GenEval needs a backend that generates images; "
            f"model.backend is {config.model.backend!r}"
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


#: The tasks whose answers the one-shot references can ensemble: one text task (not multitask, not t2i).
ONE_SHOT_TASKS = ("vqa", "classification", "caption")


def _check_mode(config: RunConfig) -> None:
    """federation.mode against the strategy (a one-shot combiner runs in one_shot only, and
    one_shot takes the strategies that can combine one upload per client) and privacy (one_shot
    scores every client's own upload on the server)."""
    federation = config.federation
    name, mode = federation.strategy.name, federation.mode
    if mode not in STRATEGIES[name].modes:
        allowed = sorted(n for n, cls in STRATEGIES.items() if mode in cls.modes)
        raise ConfigError(
            f"federation.strategy.name={name}: not with federation.mode={mode} (it runs in "
            f"{', '.join(STRATEGIES[name].modes)}); federation.mode={mode} takes {', '.join(allowed)}"
        )
    if mode == "one_shot" and config.eval.task not in ONE_SHOT_TASKS:
        raise ConfigError(
            f"federation.mode=one_shot: not with eval.task={config.eval.task}: the one-shot references (the clients' "
            "ensemble, each client's own model) score the text answers of one task"
        )
    if mode == "one_shot" and (config.privacy.level == "client" or config.privacy.secure_aggregation is not None):
        what = "privacy.level=client" if config.privacy.level == "client" else "privacy.secure_aggregation"
        raise ConfigError(
            f"federation.mode=one_shot: not with {what}: the one-shot server combines, ensembles and scores each "
            "client's own upload; use privacy.level=sample (DP-SGD inside each client) or mode rounds"
        )


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


def _check_ranks(config: RunConfig) -> None:
    """adapter.client_ranks and adapter.freeze_a against the strategy and the engine."""
    adapter, name = config.adapter, config.federation.strategy.name
    strategy = STRATEGIES[name]
    if strategy.rank_aware and "lora" not in units_over_run(config.finetune, config.federation.rounds, "share"):
        raise ConfigError(f"federation.strategy.name={name}: aggregates LoRA factors, but finetune shares no lora unit")
    if adapter.freeze_a and strategy.rank_aware:
        raise ConfigError(
            f"adapter.freeze_a: not with federation.strategy.name={name}, which needs each client's A; with A frozen "
            "FedAvg of B is already the exact average of the products (use fedavg)"
        )
    if name == "flora" and config.model.quantization != "none":
        raise ConfigError(
            "federation.strategy.name=flora: adds its merged ΔW to the base weights; needs model.quantization=none"
        )
    if name == "flora" and config.engine.name != "simulation":
        raise ConfigError("federation.strategy.name=flora: in-process engine only (engine.name=simulation)")
    if adapter.client_ranks is None:
        return
    if adapter.freeze_a:
        raise ConfigError("adapter.freeze_a: not with adapter.client_ranks in this version (set one of them)")
    if config.engine.name != "simulation":
        raise ConfigError("adapter.client_ranks: in-process engine only (engine.name=simulation)")
    ranks = sorted(set(adapter.rank_table(config.federation.num_clients).values()))
    if not strategy.rank_aware and ranks != [adapter.r]:
        aware = ", ".join(n for n, cls in sorted(STRATEGIES.items()) if cls.rank_aware)
        raise ConfigError(
            f"adapter.client_ranks: federation.strategy.name={name} needs every client at adapter.r ({adapter.r}), "
            f"got ranks {ranks}; use {aware}"
        )


def _check_tasks(config: RunConfig) -> None:
    """Per-task adapters against the backend and the strategy. (Text-to-image rows for a backend
    that cannot train them are refused where rows meet the model, ``ModelHost.train``: the data
    commands, e.g. ``fedumm partition``, take any backend.)"""
    backend = get_backend(config.model.backend)
    if not config.adapter.per_task:
        return
    if not backend.supports_generation:
        raise ConfigError(
            f"adapter.per_task: backend {config.model.backend} trains no generation task, so its generation "
            "adapter would never train; set adapter.per_task=false"
        )
    name = config.federation.strategy.name
    if not STRATEGIES[name].per_key_weights:
        able = ", ".join(n for n, cls in sorted(STRATEGIES.items()) if cls.per_key_weights)
        raise ConfigError(
            f"adapter.per_task: federation.strategy.name={name} does not weigh each adapter by the clients that "
            f"trained it; use {able}"
        )


#: Run in order; each raises ``ConfigError`` naming its key.
CHECKS = (
    _check_backend,
    _check_finetune_groups,
    _check_strategy,
    _check_mode,
    _check_privacy,
    _check_ranks,
    _check_tasks,
)


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
