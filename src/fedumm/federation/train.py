"""Local training on one client: AdamW (default) or SGD over the trainable tensors,
accumulation, clipping, autocast on CUDA, deterministic shuffling; under
``privacy.level: sample``, DP-SGD (``fedumm.privacy.dpsgd``) instead of the plain step.

Every micro-batch holds rows of one task (the backends refuse mixed batches): a client with
rows of several tasks (a mixed federation) draws one-task batches in a seeded random order, and
each batch's loss is multiplied by its task's ``train.task_loss_weights`` entry; with per-task
adapters the batch first activates its task's adapter (``activate``).

Algorithms that change the local update (FedProx's proximal term, SCAFFOLD's drift
correction) plug in through ``LocalHooks`` rather than forks of this loop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from fedumm.adapters import trainable_parameters
from fedumm.config import RunConfig, TrainConfig
from fedumm.errors import TrainingError
from fedumm.models.base import Backend
from fedumm.privacy.dpsgd import DPSGD, SampleDP
from fedumm.types import LocalHooks, TrainResult


def plan_steps(num_samples: int, config: TrainConfig) -> int:
    """Optimizer steps one local round takes."""
    if config.local_steps is not None:
        return config.local_steps
    batches_per_epoch = math.ceil(num_samples / config.batch_size)
    return max(1, math.ceil(batches_per_epoch * config.local_epochs / config.grad_accum))


def _micro_batches(num_samples: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches: a fresh seeded permutation per epoch."""
    while True:
        order = torch.randperm(num_samples, generator=generator).tolist()
        for start in range(0, num_samples, batch_size):
            yield order[start : start + batch_size]


def _task_micro_batches(tasks: Sequence[str], batch_size: int, generator: torch.Generator):
    """Endless stream of one-task index batches: per epoch a seeded permutation of the rows, each
    task's rows in that order cut into batches of ``batch_size``, all tasks' batches in a seeded
    random order."""
    names = sorted(set(tasks))
    while True:
        order = torch.randperm(len(tasks), generator=generator).tolist()
        batches = []
        for name in names:
            rows = [i for i in order if tasks[i] == name]
            batches += [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


def make_optimizer(params: Sequence[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _autocast(backend: Backend, precision: str):
    if precision == "fp32" or backend.device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def make_sample_dp(config: RunConfig, num_rows: int) -> SampleDP | None:
    """A client's DP-SGD state at ``privacy.level: sample`` (None otherwise); the planned steps
    for a target epsilon assume the client trains in every one of ``federation.rounds``."""
    if config.privacy.level != "sample":
        return None
    steps = plan_steps(num_rows, config.train)
    return SampleDP.create(config.privacy, config.train, num_rows, config.federation.rounds, steps)


class _PlainStep:
    """A plain step: a shuffled epoch stream of micro-batches, the batch's mean loss, GradScaler
    (fp16), the hooks' correction, then global-norm clipping (``train.max_grad_norm``)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, backend: Backend, config: TrainConfig, tasks: Sequence[str], seed: int
    ):
        self.optimizer, self.backend, self.config = optimizer, backend, config
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16" and backend.device.type == "cuda")
        generator = torch.Generator().manual_seed(seed)
        if len(set(tasks)) > 1:
            self.batches = _task_micro_batches(tasks, config.batch_size, generator)
        else:  # one task: the plain stream (its draws are those of every single-task run)
            self.batches = _micro_batches(len(tasks), config.batch_size, generator)

    def next_step(self) -> list[list[int]]:
        self.optimizer.zero_grad(set_to_none=True)
        return [next(self.batches) for _ in range(self.config.grad_accum)]

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backend.loss(model, batch)

    def backward(self, loss: torch.Tensor, extra: torch.Tensor | None, micro_batches: int) -> torch.Tensor:
        total = loss if extra is None else loss + extra
        self.scaler.scale(total / micro_batches).backward()
        return total

    def end_micro_batch(self, rows: int, last: bool) -> None:
        return None

    def step(self, params: dict[str, torch.nn.Parameter], hooks: LocalHooks) -> None:
        self.scaler.unscale_(self.optimizer)
        hooks.after_backward(params)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params.values(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def close(self) -> None:
        return None


class _PrivateStep:
    """A DP-SGD step (``fedumm.privacy.dpsgd``): a Poisson batch, each row's own loss, per-row
    clipping and noise. The hooks' terms depend on the parameters only, so their gradients join
    the already private gradient (post-processing); ``train.max_grad_norm`` is not applied."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        backend: Backend,
        config: TrainConfig,
        dp: SampleDP,
        num_rows: int,
        seed: int,
    ):
        self.backend = backend
        self.dpsgd = DPSGD(model, optimizer, dp, num_rows, config.batch_size, seed)
        self.extra: torch.Tensor | None = None

    def next_step(self) -> list[list[int]]:
        self.dpsgd.zero_grad()
        self.extra = None
        return self.dpsgd.next_step()

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backend.sample_losses(model, batch).mean()

    def backward(self, loss: torch.Tensor, extra: torch.Tensor | None, micro_batches: int) -> torch.Tensor:
        loss.backward()
        self.extra = extra  # differentiated once per step, after the noise
        return loss if extra is None else loss + extra.detach()

    def end_micro_batch(self, rows: int, last: bool) -> None:
        self.dpsgd.end_micro_batch(rows, last)

    def step(self, params: dict[str, torch.nn.Parameter], hooks: LocalHooks) -> None:
        if self.extra is not None:
            tensors = list(params.values())
            for param, grad in zip(tensors, torch.autograd.grad(self.extra, tensors, allow_unused=True)):
                if grad is not None:
                    param.grad += grad
        hooks.after_backward(params)
        self.dpsgd.optimizer.original_optimizer.step()

    def close(self) -> None:
        self.dpsgd.close()


def train_local(
    model: torch.nn.Module,
    backend: Backend,
    samples: Sequence[dict],
    config: TrainConfig,
    seed: int,
    hooks: LocalHooks | None = None,
    progress: bool = False,
    description: str = "local",
    dp: SampleDP | None = None,
    batches: Callable[[Sequence[dict]], dict[str, torch.Tensor]] | None = None,
    *,
    default_task: str = "vqa",
    activate: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the model's trainable tensors in place on ``samples``; ``batches`` builds a
    micro-batch's inputs from its rows (default ``backend.training_batch``; the host passes its
    preprocessing cache, ``fedumm.models.batch_cache``).

    Each micro-batch holds one task (a row's ``task`` column, else ``default_task``); its loss is
    scaled by ``config.loss_weight(task)`` and, given ``activate``, ``activate(task)`` runs first
    (per-task adapters: route the batch through its task's adapter).

    With ``dp`` (``privacy.level: sample``) each step is DP-SGD (``fedumm.privacy.dpsgd``):
    Poisson batches of expected size ``batch_size x grad_accum``, per-row clipping to
    privacy.clip_norm instead of ``train.max_grad_norm`` (ignored), Gaussian noise; ``dp``'s
    accountant counts the steps and the result carries ``dp_epsilon`` and ``dp_noise_multiplier``."""
    if not samples:
        raise ValueError("train_local needs at least one sample")
    tasks = [str(row.get("task") or default_task) for row in samples]
    if dp is not None and len(set(tasks)) > 1:
        raise TrainingError(
            f"{description}: privacy.level=sample draws Poisson batches, which would mix this client's tasks "
            f"({', '.join(sorted(set(tasks)))}); give each client one task (data.tasks)"
        )
    hooks = hooks or LocalHooks()
    batches = batches or backend.training_batch
    params = trainable_parameters(model)
    optimizer = make_optimizer(list(params.values()), config)
    torch.manual_seed(seed)  # dropout masks
    steps = plan_steps(len(samples), config)

    model.train()
    rule = (
        _PlainStep(optimizer, backend, config, tasks, seed)
        if dp is None
        else _PrivateStep(model, optimizer, backend, config, dp, len(samples), seed)
    )
    start = time.perf_counter()
    total_loss, micro_count = 0.0, 0
    bar = tqdm(
        range(steps), desc=description, leave=False, unit="step", disable=None if progress else True
    )  # None: bars only on a terminal
    session = contextlib.ExitStack()  # generation backends: seeded classifier-free-guidance prompt dropout
    session.enter_context(backend.training_session(seed, config))
    try:
        for step in bar:
            micro_batches = rule.next_step()
            for i, rows in enumerate(micro_batches):
                if rows:  # a Poisson batch may draw no row
                    task = tasks[rows[0]]
                    if activate is not None:
                        activate(task)
                    batch = backend.to_device(batches([samples[j] for j in rows]))
                    weight = config.loss_weight(task)
                    with _autocast(backend, config.precision):
                        task_loss = rule.loss(model, batch)
                        task_loss = task_loss if weight == 1.0 else task_loss * weight
                        loss = rule.backward(task_loss, hooks.extra_loss(params), len(micro_batches))
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"{description}: the training loss became {loss.item()} at step {step + 1} of {steps}; "
                            f"lower train.lr ({config.lr:g})"
                            + ("" if config.max_grad_norm or dp else " or set train.max_grad_norm")
                        )
                    total_loss += loss.item()
                    micro_count += 1
                rule.end_micro_batch(len(rows), last=i == len(micro_batches) - 1)
            rule.step(params, hooks)
            hooks.after_step(params, optimizer.param_groups[0]["lr"])
            if micro_count:
                bar.set_postfix(loss=f"{total_loss / micro_count:.3f}")
    finally:
        rule.close()
        session.close()
    model.eval()
    return TrainResult(
        num_samples=len(samples),
        steps=steps,
        mean_loss=total_loss / micro_count if micro_count else math.nan,
        seconds=time.perf_counter() - start,
        privacy=dp.metrics() if dp is not None else None,
    )
