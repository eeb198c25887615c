"""Local training on one client: AdamW (default) or SGD over the trainable tensors,
accumulation, clipping, autocast on CUDA, deterministic shuffling.

Algorithms that change the local update (FedProx's proximal term, SCAFFOLD's drift
correction) plug in through ``LocalHooks`` rather than forks of this loop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from fedumm.adapters import trainable_parameters
from fedumm.config import TrainConfig
from fedumm.errors import TrainingError
from fedumm.models.base import Backend
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


def make_optimizer(params: Sequence[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _autocast(backend: Backend, precision: str):
    if precision == "fp32" or backend.device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train_local(
    model: torch.nn.Module,
    backend: Backend,
    samples: Sequence[dict],
    config: TrainConfig,
    seed: int,
    hooks: LocalHooks | None = None,
    progress: bool = False,
    description: str = "local",
) -> TrainResult:
    """Train the model's trainable tensors in place on ``samples``."""
    if not samples:
        raise ValueError("train_local needs at least one sample")
    hooks = hooks or LocalHooks()
    params = trainable_parameters(model)
    optimizer = make_optimizer(list(params.values()), config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16" and backend.device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    batches = _micro_batches(len(samples), config.batch_size, generator)
    steps = plan_steps(len(samples), config)

    model.train()
    start = time.perf_counter()
    total_loss, micro_count = 0.0, 0
    bar = tqdm(
        range(steps), desc=description, leave=False, unit="step", disable=None if progress else True
    )  # None: bars only on a terminal
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(config.grad_accum):
            batch = backend.to_device(backend.training_batch([samples[i] for i in next(batches)]))
            with _autocast(backend, config.precision):
                loss = backend.loss(model, batch)
                extra = hooks.extra_loss(params)
                if extra is not None:
                    loss = loss + extra
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{description}: the training loss became {loss.item()} at step {step + 1} of {steps}; lower "
                    f"train.lr ({config.lr:g})" + ("" if config.max_grad_norm else " or set train.max_grad_norm")
                )
            scaler.scale(loss / config.grad_accum).backward()
            total_loss += loss.item()
            micro_count += 1
        scaler.unscale_(optimizer)
        hooks.after_backward(params)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params.values(), config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        hooks.after_step(params, optimizer.param_groups[0]["lr"])
        bar.set_postfix(loss=f"{total_loss / micro_count:.3f}")
    model.eval()
    return TrainResult(
        num_samples=len(samples),
        steps=steps,
        mean_loss=total_loss / micro_count,
        seconds=time.perf_counter() - start,
    )
