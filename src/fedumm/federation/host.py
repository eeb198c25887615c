"""The model every engine trains on: ONE frozen base model with LoRA (and trainable copies of
fully trained module groups). Clients borrow it: their states are swapped in and out, so
memory does not grow with the number of clients."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedumm.adapters import (
    apply_lora,
    copy_state,
    group_layout,
    load_state,
    matching_module_names,
    save_adapter,
    unit_parameters,
)
from fedumm.config import RunConfig, TrainConfig
from fedumm.errors import ConfigError
from fedumm.federation.train import train_local
from fedumm.finetune import RoundPlan, plan_for_round, stages, units_over_run
from fedumm.metrics import get_task, normalize_answer
from fedumm.models.base import Backend
from fedumm.models.registry import get_backend
from fedumm.privacy.dpsgd import SampleDP
from fedumm.types import LocalHooks, State, TrainResult


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
        trainable = sum(
            p.numel() for p in self.parameters_of(units_over_run(finetune, rounds, "share", "local")).values()
        )
        total = sum(p.numel() for n, p in self.model.named_parameters() if ".original_module." not in n)
        return trainable, total

    def trainable_by_stage(self) -> list[dict]:
        """One entry per run of rounds with the same plan: first and last round, the units
        trained and their parameter count (two_stage: the connector stage, then the LoRA stage)."""
        return [
            {
                "first_round": first,
                "last_round": last,
                "units": plan.trained,
                "trainable": sum(p.numel() for p in self.parameters_of(plan.trained).values()),
            }
            for first, last, plan in stages(self.config.finetune, self.config.federation.rounds)
        ]

    def save_pretrained(self, path: str) -> None:
        """The current adapter as a PEFT folder (``PeftModel.from_pretrained(base, path)``), plus
        the parameters trained in place, which peft's format has no slot for, in
        ``adapters.IN_PLACE_FILE``; ``adapters.load_adapter(base, path)`` loads both."""
        params = {k: p for unit in self.units.values() for k, p in unit.items()}
        save_adapter(self.model, path, {k: params[k] for k in self.in_place_keys})

    def train(
        self,
        samples: Sequence[dict],
        config: TrainConfig,
        seed: int,
        hooks: LocalHooks | None,
        progress: bool,
        description: str,
        dp: SampleDP | None = None,
    ) -> TrainResult:
        return train_local(self.model, self.backend, samples, config, seed, hooks, progress, description, dp)

    def generate_images(self, prompts: Sequence[str], seed: int) -> list:
        """One image per prompt from the current adapter, sampled with eval.cfg_scale and
        eval.image_temperature (a generation backend only: janus, emu3)."""
        if not self.backend.supports_generation:
            raise ConfigError(
                f"model.backend: {self.backend.name} does not generate images; text-to-image needs janus or emu3"
            )
        self.model.eval()
        evaluation = self.config.eval
        return self.backend.generate_images(
            self.model, prompts, cfg_scale=evaluation.cfg_scale, seed=seed, temperature=evaluation.image_temperature
        )

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

        A task that scores choices (classification) also scores each row: ``score`` =
        P(eval.positive_label), the softmax of the label texts' answer log-likelihoods
        (``Backend.score_choices``), for ROC-AUC."""
        task = get_task(self.config.eval.task)
        if not samples:
            return {"task": task.name, "n": 0, task.primary_metric: 0.0}
        self.model.eval()
        predictions: list[str] = []
        for start in range(0, len(samples), batch_size):
            predictions += self.backend.predict(self.model, samples[start : start + batch_size])
        records = [dict(row, prediction=p) for row, p in zip(samples, predictions)]
        scores = self.positive_scores(samples, batch_size) if task.scores_choices else None
        if scores is not None:
            for record, score in zip(records, scores):
                record["score"] = score
        return task.summarize(records, self.config.eval.positive_label)

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
