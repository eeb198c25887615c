"""The model every engine trains on: ONE frozen base model with LoRA (and trainable copies of
fully trained module groups). Clients borrow it: their states are swapped in and out, so
memory does not grow with the number of clients."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from fedumm.adapters import (
    DEFAULT_ADAPTER,
    GENERATION_TASKS,
    TASK_ADAPTERS,
    UNDERSTANDING_ADAPTER,
    activate_adapter,
    adapter_of_task,
    apply_lora,
    canonical_key,
    copy_state,
    group_layout,
    load_state,
    lora_base_weights,
    lora_layers,
    matching_module_names,
    merged_factors,
    save_adapter,
    trainable_parameters,
    unit_parameters,
)
from fedumm.config import RunConfig, TrainConfig
from fedumm.data.geneval import write_geneval_layout
from fedumm.data.synthetic import COLORS
from fedumm.errors import AdapterStateError, ConfigError
from fedumm.federation.parallel import ClientJob, ClientOutcome, round_blocker, train_clients
from fedumm.federation.train import train_local
from fedumm.finetune import RoundPlan, plan_for_round, stages, units_over_run
from fedumm.lowrank import A_SUFFIX, B_SUFFIX, pad, state_rank
from fedumm.metrics import Evaluation, normalize_answer
from fedumm.models.base import Backend
from fedumm.models.batch_cache import BatchCache
from fedumm.models.clip_score import ClipScorer
from fedumm.models.generation import target_image
from fedumm.models.registry import get_backend
from fedumm.privacy.dpsgd import SampleDP
from fedumm.types import LocalHooks, State, TrainResult, derive_seed

_IMAGE_STREAM = 7  # derive_seed stream of evaluation image sampling
_OFFICIAL_STREAM = 8  # derive_seed stream of the images drawn for GenEval's evaluator (eval.geneval_prompts)
_RECONSTRUCT_BATCH = 32


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
        #: What evaluate scores: eval.task's tasks, each row by its own (``fedumm.metrics.Evaluation``).
        self.evaluation: Evaluation = config.eval.evaluation()
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
        #: adapter.per_task: an understanding and a generation adapter, each batch through its task's.
        self.per_task: bool = config.adapter.per_task
        names = TASK_ADAPTERS if self.per_task else (DEFAULT_ADAPTER,)
        self.model = apply_lora(base, config.adapter, targets, list(modules_to_save), adapter_names=names)
        evaluation = config.eval
        #: The task of a training row without a task column (loss weights, per-task adapters).
        self.default_task: str = evaluation.default_task or (
            evaluation.task if evaluation.task != "multitask" else "vqa"
        )
        self.model.eval()
        if config.model.compile:
            # The wrapper's forward: training and scoring run compiled; generate calls the inner model, eagerly.
            self.model.compile()
        self.units = unit_parameters(self.model, self.backend.module_groups)
        if config.adapter.freeze_a:
            # FFA-LoRA: A keeps its seeded initialisation on every client; it neither trains nor travels.
            for key in [k for k in self.units["lora"] if k.endswith(A_SUFFIX)]:
                self.units["lora"].pop(key).requires_grad_(False)
        #: The host's LoRA rank R (adapter.r); ``rank``: the rank the loaded state trains at.
        self.lora_rank: int = config.adapter.r
        self.rank: int = self.lora_rank
        self._lora_layers = lora_layers(self.model)
        self._base_weights: dict[str, torch.Tensor] = {}  # originals under a frozen delta (FLoRA)
        self.frozen_delta: State = {}
        #: Canonical keys of the unit parameters trained in place (not peft modules_to_save).
        self.in_place_keys: list[str] = in_place
        self.shared_units = units_over_run(finetune, rounds, "share")
        self.local_units = units_over_run(finetune, rounds, "local")
        self.configure(plan_for_round(finetune, 1))
        tokenizer = getattr(self.backend.processor, "tokenizer", self.backend.processor)
        cache_mb = 0 if self.backend.supports_generation else config.train.preprocess_cache_mb
        #: Training batches from each row's processor output, preprocessed once per run (train.preprocess_cache_mb).
        self.batches = BatchCache(
            self.backend.training_batch,
            getattr(tokenizer, "pad_token_id", None) or 0,
            cache_mb * 2**20,
            self.backend.name,
        )
        self.initial_state: State = self.get_state(self.shared_units)
        self.initial_local_state: State = self.get_state(self.local_units)
        #: The text-to-image checker's palette (the synthetic scenes' colours).
        self.palette: dict[str, tuple[int, int, int]] = dict(COLORS)
        self._image_dir: Path | None = None
        self._reconstructed: dict[str, Image.Image] = {}
        self._clip: ClipScorer | None = None

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
        """Load ``state``; LoRA factors of a rank r below R (a client of adapter.client_ranks) fill
        the first r components, the others are set to zero and stay there while it trains."""
        units = self.shared_units if units is None else units
        rank = state_rank(state)
        if rank is not None and rank != self.lora_rank:
            state = pad(state, self.lora_rank)  # a rank above R fails the shape check below
        load_state(self.parameters_of(units), state, f"state for units {list(units)} does not match the model")
        if rank is not None:
            self.rank = rank

    @torch.no_grad()
    def set_frozen_delta(self, delta: State) -> None:
        """Base weight of each LoRA module m = its original + s·delta[m] (s = alpha / R); modules
        absent from ``delta`` go back to their original weight. FLoRA's merged stack: one dense
        matrix per module on the shared base, whatever the number of clients."""
        unknown = sorted(set(delta) - set(self._lora_layers))
        if unknown:
            raise AdapterStateError(f"frozen delta for {unknown[0]!r}, which is not a LoRA module of the model")
        for module in sorted(set(delta) | set(self._base_weights)):
            layer = self._lora_layers[module]
            weight = layer.get_base_layer().weight
            original = self._base_weights.setdefault(module, weight.detach().clone())
            if module in delta:
                if tuple(delta[module].shape) != tuple(weight.shape):
                    shape = tuple(delta[module].shape)
                    raise AdapterStateError(
                        f"frozen delta for {module!r} has shape {shape}, expected {tuple(weight.shape)}"
                    )
                scale = layer.scaling["default"]
                weight.copy_(original.float() + scale * delta[module].to(weight.device, torch.float32))
            else:
                weight.copy_(original)
        self.frozen_delta = {k: v.detach().to("cpu", torch.float32).clone() for k, v in delta.items()}

    @contextlib.contextmanager
    def task_scope(self, task: str) -> Iterator[None]:
        """Run the model with ``task``'s adapter (adapter.per_task), the adapter active before
        afterwards; without per-task adapters, nothing changes."""
        if not self.per_task:
            yield
            return
        previous = self.model.active_adapter
        activate_adapter(self.model, adapter_of_task(task))
        try:
            yield
        finally:
            activate_adapter(self.model, previous)

    def task_rows(self, samples: Sequence[dict]) -> dict[str, int]:
        """adapter.per_task: how many of ``samples`` train each adapter (by its name)."""
        counts = dict.fromkeys(TASK_ADAPTERS, 0)
        for row in samples:
            counts[adapter_of_task(str(row.get("task") or self.default_task))] += 1
        return counts

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

    def lora_base_weights(self, keys: Sequence[str]) -> State:
        """The frozen base weight under each LoRA layer whose B factor is in ``keys`` (by B key)."""
        return lora_base_weights(self.model, keys)

    def save_pretrained(self, path: str) -> None:
        """The current adapter as a PEFT folder (``PeftModel.from_pretrained(base, path)``), plus
        the parameters trained in place, which peft's format has no slot for, in
        ``adapters.IN_PLACE_FILE``; ``adapters.load_adapter(base, path)`` loads both."""
        params = {k: p for unit in self.units.values() for k, p in unit.items()}
        factors = None
        if self.frozen_delta:
            # FLoRA: the global update is s·(D + B A); saved exactly as LoRA factors of D + B A's rank.
            lora = {k: p for k, p in self.model.named_parameters() if ".lora_" in k}
            current = {canonical_key(k): p.detach().to("cpu") for k, p in lora.items()}
            factors = merged_factors(self.frozen_delta, current)
        save_adapter(self.model, path, {k: params[k] for k in self.in_place_keys}, factors)

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
        if not self.backend.supports_generation:
            t2i = sum(str(row.get("task")) in GENERATION_TASKS for row in samples)
            if t2i:
                raise ConfigError(
                    f"model.backend: {self.backend.name} cannot train text-to-image rows ({description} holds {t2i}); "
                    "use a generation backend (janus, emu3) or leave t2i rows out (data.tasks, "
                    "data.synthetic.task_mix, data.<source>.task)"
                )
        if self.rank < self.lora_rank:
            hooks = RankMask(hooks or LocalHooks(), self.rank)
        activate = None
        if self.per_task:  # each batch through its task's adapter; understanding active again afterwards
            activate = lambda task: activate_adapter(self.model, adapter_of_task(task))  # noqa: E731
        try:
            return train_local(
                self.model,
                self.backend,
                samples,
                config,
                seed,
                hooks,
                progress,
                description,
                dp,
                self.batches.batch,
                default_task=self.default_task,
                activate=activate,
            )
        finally:
            if self.per_task:
                activate_adapter(self.model, UNDERSTANDING_ADAPTER)

    @contextlib.contextmanager
    def saving_images(self, directory: Path | None) -> Iterator[None]:
        """While inside, ``t2i_images`` also writes what it generates to ``directory`` in
        GenEval's layout (``data.geneval.write_geneval_layout``); None: nowhere."""
        previous, self._image_dir = self._image_dir, directory
        try:
            yield
        finally:
            self._image_dir = previous

    def t2i_images(self, rows: Sequence[dict], batch_size: int) -> list:
        """One image per row's prompt (``generate_images``), ``batch_size`` prompts at a time,
        each batch seeded by (run seed, its first row), so a round's images depend on the adapter
        only; written in GenEval's layout under ``saving_images``."""
        images: list = []
        for start in range(0, len(rows), batch_size):
            prompts = [str(row["prompt"]) for row in rows[start : start + batch_size]]
            images += self.generate_images(prompts, derive_seed(self.config.seed, start, _IMAGE_STREAM))
        if self._image_dir is not None:
            write_geneval_layout(self._image_dir, rows, [[image] for image in images])
        return images

    def draw_samples(self, rows: Sequence[dict], samples: int, batch_size: int) -> list[list]:
        """``samples`` images per row's prompt (GenEval draws 4), ``batch_size`` prompts at a
        time; sample k of the batch at ``start`` is seeded by (run seed, start, k), so the images
        depend on the adapter only."""
        drawn: list[list] = [[] for _ in rows]
        for start in range(0, len(rows), batch_size):
            prompts = [str(row["prompt"]) for row in rows[start : start + batch_size]]
            for k in range(samples):
                seed = derive_seed(self.config.seed, start, _OFFICIAL_STREAM, k)
                for offset, image in enumerate(self.generate_images(prompts, seed)):
                    drawn[start + offset].append(image)
        return drawn

    def reconstructions(self, rows: Sequence[dict]) -> list:
        """The VQ encode-decode of each row's target image (None for a row without one): the
        checker's ceiling. Cached by row content: the tokenizer is frozen unless finetune trains
        its ``vq`` group, and then the ceiling stays that of the first evaluation."""
        keys = [_row_key(row) for row in rows]
        missing = {key: row for key, row in zip(keys, rows) if key is not None and key not in self._reconstructed}
        todo = list(missing.items())
        for start in range(0, len(todo), _RECONSTRUCT_BATCH):
            chunk = todo[start : start + _RECONSTRUCT_BATCH]
            images = self.backend.reconstruct_images([target_image(row) for _, row in chunk])
            self._reconstructed.update({key: image for (key, _), image in zip(chunk, images, strict=True)})
        return [None if key is None else self._reconstructed[key] for key in keys]

    def row_image_token_metrics(self, rows: Sequence[dict]) -> list[dict | None]:
        """Each row's teacher-forced image-token NLL and top-1 accuracy with the current adapter
        (``Backend.image_token_metrics`` of that row alone); None for a row without a target image."""
        with self.task_scope("t2i"):
            return [
                None if _row_key(row) is None else self.backend.image_token_metrics(self.model, [row]) for row in rows
            ]

    def clip_scores(self, images: Sequence, prompts: Sequence[str]) -> list[float] | None:
        """CLIPScore of each image against its prompt with eval.clip_model (loaded once); None when unset."""
        if self.config.eval.clip_model is None:
            return None
        if self._clip is None:
            self._clip = ClipScorer(self.config.eval.clip_model, self.config.model.device)
        return self._clip.scores(images, prompts)

    def parallel_blocker(self, round_num: int) -> str | None:
        """Why round ``round_num``'s clients cannot train together (``engine.parallel_clients``);
        None: they can (``fedumm.federation.parallel``)."""
        plan = plan_for_round(self.config.finetune, round_num)
        return round_blocker(self.config, self.backend, self._lora_layers, plan.trained, self.local_units)

    def trainable_state(self) -> State:
        """Copies of the tensors the current round trains (what a joint update starts from)."""
        return copy_state(trainable_parameters(self.model))

    def load_trainable(self, state: State) -> None:
        """Load a client's trained tensors (a joint update's outcome) into the model."""
        load_state(trainable_parameters(self.model), state, "trained state does not match the model")

    def train_clients(self, jobs: Sequence[ClientJob], config: TrainConfig, progress: bool) -> list[ClientOutcome]:
        """Train several clients' updates in one forward/backward per step (``engine.parallel_clients``)."""
        return train_clients(self.model, self.backend, self._lora_layers, jobs, config, progress, self.batches.batch)

    def generate_images(self, prompts: Sequence[str], seed: int) -> list:
        """One image per prompt from the current adapter, sampled with eval.cfg_scale and
        eval.image_temperature (a generation backend only: janus, emu3)."""
        if not self.backend.supports_generation:
            raise ConfigError(
                f"model.backend: {self.backend.name} does not generate images; text-to-image needs janus or emu3"
            )
        self.model.eval()
        evaluation = self.config.eval
        with self.task_scope("t2i"):
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
        """Score ``samples`` with the current adapter: each row by its task (``Evaluation.evaluate``;
        multitask runs break down ``by_task``). A text task generates answers (``predict``); one
        that scores choices (classification) also scores each row: ``score`` = P(eval.positive_label),
        the softmax of the label texts' answer log-likelihoods (``Backend.score_choices``), for ROC-AUC.

        Raises:
            DataError: naming the row, for a row whose task the run does not score.
        """
        return self.evaluation.evaluate(self, samples, batch_size, scope=self.task_scope)

    def predict(self, samples: Sequence[dict], batch_size: int) -> list[str]:
        """The answer of each row with the current adapter, ``batch_size`` rows at a time: generated
        (batched greedy decoding with the KV cache up to model.max_new_tokens), or under
        ``eval.mode: score`` the most likely of eval.choices (``choose``)."""
        if self.config.eval.mode == "score":
            return self.choose(samples, batch_size)
        self.model.eval()
        predictions: list[str] = []
        for start in range(0, len(samples), batch_size):
            predictions += self.backend.predict(self.model, samples[start : start + batch_size])
        return predictions

    def choose(self, samples: Sequence[dict], batch_size: int) -> list[str]:
        """``eval.mode: score``: each row's answer is argmax_j log p(choice_j | image, question), the
        teacher-forced log-likelihood of eval.choices entry j (``Backend.score_choices``: summed over
        its answer tokens and end token), as EleutherAI's lm-evaluation-harness scores multiple-choice
        tasks (Gao et al., 2021: the log-likelihood of each continuation); ties go to the earlier choice."""
        choices = list(self.config.eval.choices or ())
        self.model.eval()
        answers: list[str] = []
        for start in range(0, len(samples), batch_size):
            log_likelihood = self.backend.score_choices(self.model, samples[start : start + batch_size], choices)
            answers += [choices[j] for j in log_likelihood.argmax(dim=-1).tolist()]
        return answers

    def summarize(
        self,
        samples: Sequence[dict],
        predictions: Sequence[str],
        batch_size: int,
        scores: Sequence[float] | None = None,
    ) -> dict:
        """The metrics of given answers to ``samples`` in a single-task run of a text task (what
        ``evaluate`` computes from ``predict``); a task that scores choices gets ``scores``
        (default: the current adapter's ``positive_scores``)."""
        evaluation = self.evaluation
        task = evaluation.tasks[evaluation.name]
        if not samples:
            return evaluation.combine({})
        records = [dict(row, prediction=p) for row, p in zip(samples, predictions)]
        if task.scores_choices and scores is None:
            scores = self.positive_scores(samples, batch_size)
        if task.scores_choices and scores is not None:
            for record, score in zip(records, scores):
                record["score"] = score
        return evaluation.combine({evaluation.name: task.summarize(records, evaluation.options)})

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


class RankMask(LocalHooks):
    """A client of rank r on the host's rank-R LoRA: the components r..R of every factor get no
    gradient (zeroed after backward, before clipping, the step and any DP noise is applied) and
    are set back to zero after each step, so weight decay or noise cannot move them either."""

    def __init__(self, inner: LocalHooks, rank: int):
        self.inner, self.rank = inner, rank

    def extra_loss(self, params):
        return self.inner.extra_loss(params)

    @torch.no_grad()
    def _tails(self, tensors: dict[str, torch.Tensor | None]) -> None:
        for key, tensor in tensors.items():
            if tensor is None:
                continue
            if key.endswith(A_SUFFIX):
                tensor[self.rank :] = 0
            elif key.endswith(B_SUFFIX):
                tensor[:, self.rank :] = 0

    def after_backward(self, params):
        self._tails({k: p.grad for k, p in params.items()})
        self.inner.after_backward(params)

    def after_step(self, params, lr):
        self.inner.after_step(params, lr)
        self._tails(dict(params))


def _check_lora_outside(base: torch.nn.Module, targets: str, modules_to_save: dict[str, str]) -> None:
    """LoRA inside a module that trains fully would be trained twice over (peft refuses it)."""
    for name in matching_module_names(base, targets):
        for module, unit in modules_to_save.items():
            if name == module or name.startswith(f"{module}."):
                raise ConfigError(
                    f"adapter.target_modules: LoRA target {name!r} lies in the {unit!r} group, which "
                    f"finetune trains fully; anchor the LoRA regex ({targets!r}) outside it or freeze that group"
                )


def _row_key(row: dict) -> str | None:
    """A text-to-image row's identity for the reconstruction cache: its prompt and the bytes of
    its target image (None: the row has no target image)."""
    if row.get("image") is None and not row.get("images"):
        return None
    image = target_image(row).convert("RGB")
    digest = hashlib.sha256(json.dumps([row.get("prompt"), image.size]).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
