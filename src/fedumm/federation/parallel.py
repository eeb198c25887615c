"""Vectorised clients (``engine.parallel_clients``): several clients' local updates in one
forward/backward on the one frozen base model.

The idea is mLoRA's (Ye et al., "mLoRA: Fine-Tuning LoRA Adapters via Highly-Efficient
Pipeline Parallelism in Multiple GPUs", VLDB 2025): many LoRA adapters share one frozen base,
so their batches are concatenated, the base layers run once over all rows, and each adapter's
low-rank delta is applied to its own rows only. For a LoRA layer with base weight W and client
k's factors (A_k, B_k), scale s = alpha / r, and rows X_k of client k:

    Y_k = X_k Wᵀ + s · dropout(X_k) A_kᵀ B_kᵀ

The X Wᵀ product runs once over [X_1; ...; X_K]; the deltas run as two batched matmuls
(``torch.bmm`` over stacked factors) when every client brings as many rows, else one pair of
matmuls per client segment.

Why not peft's mixed-adapter batches (``adapter_names`` / ``_mixed_batch_forward``): peft
refuses them in training mode, and they need K named adapters inside the model, which changes
its parameter names (the canonical keys every state exchange relies on). Here the peft model is
left as it is: during a joint update each peft LoRA ``Linear`` is routed (its ``forward``
replaced for the duration, then restored) to the clients' own copies of the factors.

What stays exactly per client, so that each client ends with the state the sequential trainer
(``fedumm.federation.train``) gives it: its factors and optimizer (AdamW/SGD state and step
count are its own), its loss (the mean over its own answer tokens, ``Backend.segment_losses``),
its gradient clipping (the global norm over its own tensors), its algorithm hooks (FedProx's
proximal term, SCAFFOLD's correction, ``LocalHooks``), its number of steps (a client whose
steps are done leaves the batch) and its seed: its shuffled micro-batches are the sequential
trainer's stream (``_micro_batches`` under the same seed). Dropout masks are drawn once for the
concatenated batch, so with dropout > 0 they match the sequential draws in distribution, not
draw for draw. A client whose loss turns non-finite leaves the batch with the sequential
trainer's error; the others go on. ``train_seconds``: each step's wall time is shared among
the clients in it by their rows, so the clients' seconds add up to the joint time.

What cannot vectorise, and trains one client after another instead (``round_blocker`` names
the reason, and the transport warns once per reason): a round that trains anything besides
LoRA (a fully trained group such as the connector) or keeps a non-LoRA group local, DP-SGD
(``privacy.level: sample``: per-row clipping of each client's own Poisson batch), LoRA ranks
per client (``adapter.client_ranks``), fp16 (one GradScaler per client), a generation backend
(its seeded classifier-free-guidance prompt dropout and its own loss) and a LoRA layer that is
not a plain peft ``Linear`` (DoRA and other variants). NVIDIA FLARE trains each site in its own
process, sequentially within the site.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from fedumm.adapters import trainable_parameters
from fedumm.config import RunConfig, TrainConfig
from fedumm.errors import TrainingError
from fedumm.federation.train import _autocast, _micro_batches, make_optimizer, plan_steps
from fedumm.lowrank import A_SUFFIX, B_SUFFIX
from fedumm.models.base import Backend
from fedumm.types import LocalHooks, State, TrainResult

#: The one adapter name fedumm gives peft.
_ADAPTER = "default"


def round_blocker(
    config: RunConfig,
    backend: Backend,
    lora_layers: Mapping[str, torch.nn.Module],
    trained_units: Sequence[str],
    local_units: Sequence[str],
) -> str | None:
    """Why a round with these settings cannot train its clients together (None: it can)."""
    if list(trained_units) != ["lora"]:
        return f"the round trains {', '.join(trained_units) or 'nothing'}, not LoRA alone"
    kept = sorted(set(local_units) - {"lora"})
    if kept:
        return f"finetune keeps the {', '.join(kept)} group local (each client's forward differs outside LoRA)"
    if config.privacy.level == "sample":
        return "DP-SGD (privacy.level: sample) clips each row of each client's own Poisson batch"
    if config.adapter.client_ranks:
        return "adapter.client_ranks gives clients LoRA ranks of their own"
    if config.train.precision == "fp16" and backend.device.type == "cuda":
        return "train.precision fp16 scales each client's loss with a GradScaler of its own"
    if backend.supports_generation:
        return f"backend {backend.name} trains generation rows (seeded prompt dropout, its own loss)"
    for name, layer in lora_layers.items():
        if type(layer).__name__ != "Linear" or getattr(layer, "lora_variant", {}) or _ADAPTER not in layer.lora_A:
            return f"LoRA layer {name} is a {type(layer).__name__} (a plain peft Linear LoRA vectorises)"
    return None


@dataclass
class ClientJob:
    """One client's share of a joint update: its rows, seed and hooks, and the state (the
    model's trainable tensors, canonical keys) it starts from."""

    samples: Sequence[dict]
    seed: int
    hooks: LocalHooks
    start: State
    description: str


@dataclass
class ClientOutcome:
    """A client's trained tensors and result, or why it could not train (``error``)."""

    result: TrainResult | None = None
    state: State | None = None
    error: str | None = None


@dataclass
class _Slot:
    job: ClientJob
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    steps: int
    batches: Iterator[list[int]]
    step: int = 0
    total_loss: float = 0.0
    micro_count: int = 0
    seconds: float = 0.0
    error: str | None = None
    micro: list[list[int]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.error is None and self.step < self.steps


class _Routing:
    """Routes every peft LoRA ``Linear`` of the model to per-client factors while active
    (``route``): the base layer runs over all rows, each client's delta over its own."""

    def __init__(self, lora_layers: Mapping[str, torch.nn.Module]):
        self.layers = dict(lora_layers)
        self.factors: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self.sizes: list[int] = []
        self.by_layer: dict[str, int] = {name: i for i, name in enumerate(self.layers)}

    @contextlib.contextmanager
    def route(self, params: Sequence[Mapping[str, torch.Tensor]], sizes: Sequence[int]) -> Iterator[None]:
        self.sizes = list(sizes)
        self.factors = []
        for name, layer in self.layers.items():  # a factor a client does not train (freeze_a) is the layer's own
            a, b = layer.lora_A[_ADAPTER].weight, layer.lora_B[_ADAPTER].weight
            self.factors.append(
                ([p.get(name + A_SUFFIX, a) for p in params], [p.get(name + B_SUFFIX, b) for p in params])
            )
        originals = {}
        try:
            for name, layer in self.layers.items():
                originals[name] = layer.__dict__.get("forward")
                layer.forward = self._forward_of(name, layer)
            yield
        finally:
            for name, layer in self.layers.items():
                if originals.get(name) is None:
                    layer.__dict__.pop("forward", None)
                else:
                    layer.forward = originals[name]
            self.factors = []

    def _forward_of(self, name: str, layer: torch.nn.Module):
        index = self.by_layer[name]

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            result = layer.base_layer(x, *args, **kwargs)
            rows = sum(self.sizes)
            if x.shape[0] != rows:
                raise TrainingError(
                    f"engine.parallel_clients: LoRA layer {name} sees {x.shape[0]} leading rows for a batch of "
                    f"{rows}; its input is not batch-first, so this model cannot train clients together "
                    "(set engine.parallel_clients: 1)"
                )
            a_list, b_list = self.factors[index]
            x = x.to(a_list[0].dtype)
            dropped = layer.lora_dropout[_ADAPTER](x)
            scale = layer.scaling[_ADAPTER]
            if len(set(self.sizes)) == 1:  # equal segments: two batched matmuls over stacked factors
                k = len(self.sizes)
                flat = dropped.reshape(k, -1, dropped.shape[-1])
                a, b = torch.stack(a_list), torch.stack(b_list)
                delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
                delta = delta.reshape(*result.shape[:-1], delta.shape[-1])
            else:
                parts = dropped.split(self.sizes)
                delta = torch.cat(
                    [
                        torch.nn.functional.linear(torch.nn.functional.linear(part, a), b)
                        for part, a, b in zip(parts, a_list, b_list)
                    ]
                )
            return (result + delta * scale).to(result.dtype)

        return forward


def train_clients(
    model: torch.nn.Module,
    backend: Backend,
    lora_layers: Mapping[str, torch.nn.Module],
    jobs: Sequence[ClientJob],
    config: TrainConfig,
    progress: bool = False,
    batches: Callable[[Sequence[dict]], dict[str, torch.Tensor]] | None = None,
) -> list[ClientOutcome]:
    """Train ``jobs`` together (see the module docstring); the model's own tensors are left
    untouched. One outcome per job, in order. ``batches`` builds a batch from rows (default
    ``backend.training_batch``; the host passes its preprocessing cache, as to ``train_local``)."""
    if not jobs or any(not job.samples for job in jobs):
        raise ValueError("train_clients needs at least one client, each with at least one sample")
    batches = batches or backend.training_batch
    live = trainable_parameters(model)
    slots = []
    for job in jobs:
        params = {key: torch.nn.Parameter(job.start[key].to(p.device, p.dtype, copy=True)) for key, p in live.items()}
        slots.append(
            _Slot(
                job,
                params,
                make_optimizer(list(params.values()), config),
                plan_steps(len(job.samples), config),
                _micro_batches(len(job.samples), config.batch_size, torch.Generator().manual_seed(job.seed)),
            )
        )
    routing = _Routing(lora_layers)
    torch.manual_seed(jobs[0].seed)  # dropout masks: one stream for the concatenated batch
    model.train()
    bar = tqdm(
        total=max(s.steps for s in slots),
        desc=f"{jobs[0].description} +{len(jobs) - 1} together",
        leave=False,
        unit="step",
        disable=None if progress else True,
    )
    try:
        while any(s.active for s in slots):
            _joint_step(model, backend, routing, [s for s in slots if s.active], config, batches)
            bar.update(1)
    finally:
        bar.close()
        model.eval()
    outcomes = []
    for slot in slots:
        if slot.error is not None:
            outcomes.append(ClientOutcome(error=slot.error))
            continue
        result = TrainResult(
            num_samples=len(slot.job.samples),
            steps=slot.steps,
            mean_loss=slot.total_loss / slot.micro_count if slot.micro_count else math.nan,
            seconds=slot.seconds,
        )
        state = {k: p.detach().to("cpu", copy=True) for k, p in slot.params.items()}
        outcomes.append(ClientOutcome(result, state))
    return outcomes


def _joint_step(
    model: torch.nn.Module,
    backend: Backend,
    routing: _Routing,
    slots: Sequence[_Slot],
    config: TrainConfig,
    batches: Callable[[Sequence[dict]], dict[str, torch.Tensor]],
) -> None:
    """One optimizer step of every slot: ``grad_accum`` joint micro-batches, then each client's
    hooks, clipping and step, as ``federation.train``'s plain step does for one client."""
    start = time.perf_counter()
    for slot in slots:
        for param in slot.params.values():
            param.grad = None
        slot.micro = [next(slot.batches) for _ in range(config.grad_accum)]
    for i in range(config.grad_accum):
        members = [s for s in slots if s.error is None]
        if not members:
            break
        sizes = [len(s.micro[i]) for s in members]
        rows = [s.job.samples[j] for s in members for j in s.micro[i]]
        batch = backend.to_device(batches(rows))
        with _autocast(backend, config.precision), routing.route([s.params for s in members], sizes):
            losses = backend.segment_losses(model, batch, sizes)
            terms = []
            for slot, loss in zip(members, losses):
                extra = slot.job.hooks.extra_loss(slot.params)
                total = loss if extra is None else loss + extra
                value = total.item()
                if not math.isfinite(value):
                    slot.error = (
                        f"{slot.job.description}: the training loss became {value} at step {slot.step + 1} of "
                        f"{slot.steps}; lower train.lr ({config.lr:g})"
                        + ("" if config.max_grad_norm else " or set train.max_grad_norm")
                    )
                    continue
                terms.append(total / config.grad_accum)
                slot.total_loss += value
                slot.micro_count += 1
            if terms:
                torch.stack(terms).sum().backward()
    done = [s for s in slots if s.error is None]
    for slot in done:
        hooks, params = slot.job.hooks, slot.params
        hooks.after_backward(params)
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params.values(), config.max_grad_norm)
        slot.optimizer.step()
        hooks.after_step(params, slot.optimizer.param_groups[0]["lr"])
        slot.step += 1
    elapsed = time.perf_counter() - start
    rows = {id(s): sum(len(m) for m in s.micro) for s in slots}
    total_rows = sum(rows.values()) or 1
    for slot in slots:
        slot.seconds += elapsed * rows[id(slot)] / total_rows
