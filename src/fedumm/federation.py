"""Round logic shared by every engine: ``ClientRuntime.fit``/``evaluate`` and ``Server``.

Messages between server and clients are safetensors bytes (``fedumm.codec``), so the byte
counts reported are those of the real payload. No engine is imported here: the in-process
simulation and the NVIDIA FLARE engine both drive these classes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedumm import codec
from fedumm.adapters import (
    apply_lora,
    copy_state,
    group_layout,
    load_state,
    matching_module_names,
    save_adapter,
    unit_parameters,
)
from fedumm.config import FederationConfig, RunConfig, TrainConfig
from fedumm.data.federated import ClientData
from fedumm.errors import ConfigError
from fedumm.evaluate import normalize_answer
from fedumm.task_metrics import PRIMARY_METRIC, summarize_task
from fedumm.finetune import RoundPlan, plan_for_round, stages, units_over_run
from fedumm.models.base import Backend
from fedumm.models.registry import get_backend
from fedumm.strategies import ClientAlgorithm, ClientUpdate, State, Strategy
from fedumm.train import LocalHooks, TrainResult, train_local


def derive_seed(*parts: int) -> int:
    """A stable 32-bit seed from integers (run seed, round, client)."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


def clients_per_round(config: FederationConfig, num_clients: int) -> int:
    """ceil(fraction_fit * K), at least min_fit_clients, at most K."""
    return min(num_clients, max(config.min_fit_clients, math.ceil(config.fraction_fit * num_clients)))


class ModelHost:
    """One frozen base model wrapped with LoRA (and trainable copies of any fully trained
    module group). Clients borrow it: their states are swapped in and out, so memory does not
    grow with the number of clients.

    A fully trained group goes to peft as ``modules_to_save`` where it has modules of its own
    (``adapters.group_layout``); its parameters that sit on a module shared with other groups
    (LLaVA-NeXT's ``image_newline``) train in place. Either way they are unit tensors: they
    travel, stay local and persist per client like the rest. A run that never trains LoRA adds
    no LoRA layer (full language-model fine-tuning would otherwise wrap LoRA inside the very
    modules it trains)."""

    def __init__(self, config: RunConfig):
        self.config = config
        finetune, rounds = config.finetune, config.federation.rounds
        self.backend: Backend = get_backend(config.model.backend)(config.model)
        base = self.backend.load()
        trained = units_over_run(finetune, rounds, "share", "local")
        modules_to_save: dict[str, str] = {}  # module name -> its unit
        in_place: list[str] = []
        for unit in trained:
            if unit == "lora":
                continue
            pattern = self.backend.module_groups.get(unit)
            modules, bare = group_layout(base, pattern) if pattern else ([], [])
            if not modules and not bare:
                raise ConfigError(f"finetune: backend {self.backend.name} has no {unit!r} module group to train")
            modules_to_save.update(dict.fromkeys(modules, unit))
            in_place += bare
        targets = self.backend.lora_target_regex(config.adapter) if "lora" in trained else None
        if targets is not None:
            _check_lora_outside(base, targets, modules_to_save)
        if targets is None and not modules_to_save:
            raise ConfigError(
                f"finetune: the {', '.join(trained)} group of backend {self.backend.name} has no "
                "module of its own (only parameters trained in place); train lora with it"
            )
        torch.manual_seed(config.seed)  # LoRA A matrices are initialised randomly
        self.model = apply_lora(base, config.adapter, targets, list(modules_to_save))
        self.model.eval()
        self.units = unit_parameters(self.model, self.backend.module_groups)
        #: Canonical keys of the unit parameters trained in place (not peft modules_to_save).
        self.in_place_keys: list[str] = in_place
        self.shared_units = units_over_run(finetune, rounds, "share")
        self.local_units = units_over_run(finetune, rounds, "local")
        self.configure(plan_for_round(finetune, 1))
        self.initial_state: State = self.get_state(self.shared_units)
        self.initial_local_state: State = self.get_state(self.local_units)

    def configure(self, plan: RoundPlan) -> None:
        """Make exactly the units this round trains require gradients."""
        for unit, params in self.units.items():
            for param in params.values():
                param.requires_grad_(unit in plan.trained)

    def parameters_of(self, units: Sequence[str]) -> dict[str, torch.nn.Parameter]:
        return {k: p for u in units for k, p in self.units[u].items()}

    def get_state(self, units: Sequence[str] | None = None) -> State:
        return copy_state(self.parameters_of(self.shared_units if units is None else units))

    def set_state(self, state: State, units: Sequence[str] | None = None) -> None:
        units = self.shared_units if units is None else units
        load_state(self.parameters_of(units), state, f"state for units {list(units)} does not match the model")

    def reset_local(self) -> None:
        """Local (never shared) units back to their initial values, as the global model has them."""
        if self.local_units:
            self.set_state(self.initial_local_state, self.local_units)

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total): the parameters of every unit some round trains (two_stage: the
        connector and LoRA), and every parameter of the model as it runs (peft's frozen
        original copies of modules_to_save not counted twice)."""
        finetune, rounds = self.config.finetune, self.config.federation.rounds
        trainable = sum(p.numel() for p in self.parameters_of(units_over_run(finetune, rounds, "share", "local")).values())
        total = sum(p.numel() for n, p in self.model.named_parameters() if ".original_module." not in n)
        return trainable, total

    def trainable_by_stage(self) -> list[dict]:
        """One entry per run of rounds with the same plan: first and last round, the units
        trained and their parameter count (two_stage: the connector stage, then the LoRA stage)."""
        return [
            {"first_round": first, "last_round": last, "units": plan.trained,
             "trainable": sum(p.numel() for p in self.parameters_of(plan.trained).values())}
            for first, last, plan in stages(self.config.finetune, self.config.federation.rounds)
        ]

    def save_pretrained(self, path: str) -> None:
        """The current adapter as a PEFT folder (``PeftModel.from_pretrained(base, path)``), plus
        the parameters trained in place, which peft's format has no slot for, in
        ``adapters.IN_PLACE_FILE``; ``adapters.load_adapter(base, path)`` loads both."""
        params = {k: p for unit in self.units.values() for k, p in unit.items()}
        save_adapter(self.model, path, {k: params[k] for k in self.in_place_keys})

    def train(self, samples: Sequence[dict], config: TrainConfig, seed: int, hooks: LocalHooks | None,
              progress: bool, description: str) -> TrainResult:
        return train_local(self.model, self.backend, samples, config, seed, hooks, progress, description)

    def class_choices(self, samples: Sequence[dict]) -> list[str] | None:
        """Classification: the label texts to score, eval.positive_label first, the other
        labels present in ``samples`` after it; None when the positive label or any other
        label is absent (ROC-AUC is undefined there)."""
        positive = self.config.eval.positive_label
        labels: dict[str, str] = {}
        for row in samples:
            text = str(row.get("multiple_choice_answer", row.get("label")))
            labels.setdefault(normalize_answer(text), text)
        key = normalize_answer(positive)
        if key not in labels or len(labels) < 2:
            return None
        return [positive] + [labels[k] for k in sorted(labels) if k != key]

    def evaluate(self, samples: Sequence[dict], batch_size: int) -> dict:
        """Generate answers for ``samples`` with the current adapter and score them.

        Classification also scores each row: ``score`` = P(eval.positive_label), the softmax of
        the label texts' answer log-likelihoods (``Backend.score_choices``), for ROC-AUC."""
        task = self.config.eval.task
        if not samples:
            return {"task": task, "n": 0, PRIMARY_METRIC[task]: 0.0}
        self.model.eval()
        predictions: list[str] = []
        for start in range(0, len(samples), batch_size):
            predictions += self.backend.predict(self.model, samples[start : start + batch_size])
        records = [dict(row, prediction=p) for row, p in zip(samples, predictions)]
        scores = self.positive_scores(samples, batch_size) if task == "classification" else None
        if scores is not None:
            for record, score in zip(records, scores):
                record["score"] = score
        return summarize_task(records, task, self.config.eval.positive_label)

    def positive_scores(self, samples: Sequence[dict], batch_size: int) -> list[float] | None:
        """P(eval.positive_label) per row: the softmax over ``class_choices`` of their answer
        log-likelihoods (``Backend.score_choices``); None where ``class_choices`` is None."""
        choices = self.class_choices(samples)
        if choices is None:
            return None
        self.model.eval()
        scores: list[float] = []
        for start in range(0, len(samples), batch_size):
            log_likelihood = self.backend.score_choices(self.model, samples[start : start + batch_size], choices)
            scores += log_likelihood.softmax(dim=-1)[:, 0].tolist()
        return scores


def _check_lora_outside(base: torch.nn.Module, targets: str, modules_to_save: dict[str, str]) -> None:
    """LoRA inside a module that trains fully would be trained twice over (peft refuses it)."""
    for name in matching_module_names(base, targets):
        for module, unit in modules_to_save.items():
            if name == module or name.startswith(f"{module}."):
                raise ConfigError(
                    f"adapter.target_modules: LoRA target {name!r} lies in the {unit!r} group, which "
                    f"finetune trains fully; anchor the LoRA regex ({targets!r}) outside it or freeze that group"
                )


@dataclass
class FitReply:
    client_id: int
    payload: bytes
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class ClientRuntime:
    """One client's side of a round. Holds its data, its algorithm's client half and any
    per-client state that must persist between rounds (e.g. SCAFFOLD's control variate)."""

    def __init__(self, data: ClientData, host: ModelHost, config: RunConfig,
                 algorithm: ClientAlgorithm | None = None):
        self.data = data
        self.host = host
        self.config = config
        self.algorithm = algorithm or ClientAlgorithm()
        self.client_state: State = {}  # the algorithm's per-client tensors
        self.local_state: State = {}  # kept-local units (personalisation)

    @property
    def client_id(self) -> int:
        return self.data.client_id

    def fit(self, message: bytes, round_num: int, progress: bool = False) -> FitReply:
        """Load the global state (and this client's kept-local units), train the units this
        round's plan trains, evaluate on the local test split, reply with the shared ones."""
        parts = codec.decode_message(message)
        global_state, server_extras = parts["state"], parts.get("extras", {})
        host = self.host
        plan = plan_for_round(self.config.finetune, round_num)
        host.configure(plan)
        host.set_state(global_state)
        if host.local_units:
            host.set_state(self.local_state or host.initial_local_state, host.local_units)
        trained_keys = list(host.parameters_of(plan.shared))
        round_global = {k: global_state[k] for k in trained_keys}
        hooks = self.algorithm.hooks(round_global, server_extras, self.client_state)
        seed = derive_seed(self.config.seed, round_num, self.client_id)
        result = host.train(
            self.data.train, self.config.train, seed, hooks, progress,
            description=f"round {round_num} client {self.client_id}",
        )
        trained = host.get_state(plan.shared)
        extras, self.client_state = self.algorithm.finish(
            round_global, trained, server_extras, self.client_state, result, self.config.train.lr
        )
        if host.local_units:
            self.local_state = host.get_state(host.local_units)
        metrics: dict[str, float] = {
            "train_loss": result.mean_loss,
            "steps": result.steps,
            "train_seconds": result.seconds,
        }
        if self.config.eval.clients and self.data.test:
            local = host.evaluate(self.data.test, self.config.eval.batch_size)
            primary = PRIMARY_METRIC[self.config.eval.task]
            metrics[f"local_{primary}"] = local[primary]
            metrics["local_test_samples"] = local["n"]
        payload = codec.encode_message({"state": trained, "extras": extras}, self.config.federation.wire_dtype)
        return FitReply(self.client_id, payload, result.num_samples, metrics)


class Server:
    """Holds the global state and the strategy; samples clients, broadcasts, aggregates."""

    def __init__(self, strategy: Strategy, initial_state: State, config: FederationConfig, seed: int):
        self.strategy = strategy
        self.global_state: State = {k: v.clone() for k, v in initial_state.items()}
        self.config = config
        self.seed = seed
        self.start_round = 0  # rounds already done: a resumed run continues at start_round + 1
        self.resumed = None  # the runlog.Checkpoint restored from, if any

    @classmethod
    def from_config(cls, config: RunConfig, initial_state: State, num_clients: int, checkpoint=None) -> Server:
        """The run's server, as every engine builds it: federation.strategy for this run and,
        with federation.resume_from, the global adapter and strategy state of that checkpoint
        (``checkpoint``: the one already read from there)."""
        from fedumm.runlog import read_checkpoint
        from fedumm.strategies import build_strategy

        strategy = build_strategy(config.federation.strategy, num_clients=num_clients, task=config.eval.task)
        server = cls(strategy, initial_state, config.federation, config.seed)
        if config.federation.resume_from:
            server.restore(checkpoint or read_checkpoint(config.federation.resume_from), config, num_clients)
        return server

    def restore(self, checkpoint, config: RunConfig, num_clients: int) -> None:
        """Load a ``runlog.Checkpoint`` after checking it against this run: the model's adapter
        keys and shapes, the strategy's state keys, the clients' state keys, rounds left."""
        from fedumm.adapters import check_state_matches
        from fedumm.errors import AdapterStateError
        from fedumm.strategies.stateful import check_per_key_state

        where = f"federation.resume_from: {checkpoint.path}"
        name = self.strategy.name
        checkpoint.check_config(config, num_clients)
        try:
            check_state_matches(self.global_state, checkpoint.global_state,
                                "its global adapter does not match the model's adapter")
        except AdapterStateError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        restored = {k: v.to(self.global_state[k].dtype) for k, v in checkpoint.global_state.items()}
        try:
            self.strategy.load_state_dict(checkpoint.server_state, reference=restored)
            for cid, state in checkpoint.client_states.items():
                if not 0 <= cid < num_clients:
                    raise ValueError(f"client id {cid} is not below federation.num_clients ({num_clients})")
                check_per_key_state(restored, state, f"client {cid}'s algorithm state")
        except ValueError as exc:
            raise ConfigError(f"{where}: does not fit strategy {name!r}: {exc}") from exc
        self.global_state = restored
        self.start_round = checkpoint.round
        self.resumed = checkpoint

    def sample_clients(self, round_num: int, client_ids: Sequence[int]) -> list[int]:
        count = clients_per_round(self.config, len(client_ids))
        if count == len(client_ids):
            return list(client_ids)
        rng = np.random.default_rng(derive_seed(self.seed, round_num, 7919))
        return sorted(rng.choice(list(client_ids), size=count, replace=False).tolist())

    def broadcast(self, round_num: int) -> bytes:
        """The message every sampled client receives: global state + strategy extras."""
        extras = self.strategy.server_extras(self.global_state, round_num)
        return codec.encode_message({"state": self.global_state, "extras": extras}, self.config.wire_dtype)

    def aggregate(self, replies: Sequence[FitReply], round_num: int) -> State:
        updates = []
        for reply in replies:
            parts = codec.decode_message(reply.payload)
            updates.append(ClientUpdate(reply.client_id, reply.num_samples, parts["state"],
                                        dict(reply.metrics), parts.get("extras", {})))
        if not updates:
            return self.global_state
        # Clients send only the units trained this round; the rest of the global state stays.
        trained = {k: self.global_state[k] for k in updates[0].state if k in self.global_state}
        new = self.strategy.aggregate(trained, updates, round_num)
        self.global_state = {**self.global_state, **new}
        return self.global_state
