"""Record-level DP-SGD inside a client (``privacy.level: sample``), over Opacus.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") makes each local step
a subsampled Gaussian mechanism over the client's rows. With n rows, expected batch
L = ``train.batch_size x train.grad_accum``, q = L / n, clip norm C and noise multiplier z:

    B ~ Poisson(q)                        each row joins the step's batch with probability q
    g_i = grad l_i(theta)                 per-row gradient of the trainable tensors only
    g~_i = g_i * min(1, C / ||g_i||_2)    per-row clipping
    g = (sum_{i in B} g~_i + N(0, (z C)^2 I)) / L

and the wrapped optimizer (SGD, AdamW) steps on g. ``l_i`` is row i's own loss
(``Backend.sample_losses``), so one row's gradient never depends on the other rows of the batch.

Pieces, all Opacus's: ``GradSampleModule`` (hooks mode) computes the per-row gradients of the
parameters that require grad (LoRA, connector copies; the frozen base gets none);
``DPOptimizer`` clips, sums, noises and divides by L; ``UniformWithReplacementSampler`` draws the
Poisson batches; ``RDPAccountant`` (Mironov 2017; Mironov et al. 2019) turns the steps' (z, q)
into epsilon at ``privacy.delta``. ``SampleDP`` is one client's part that outlives a round (z, q,
C and the accountant); ``DPSGD`` attaches to the model for one ``train_local`` call.

Interplay with local training: ``train.max_grad_norm`` is ignored (per-row clipping to C
replaces it); ``train.precision: fp16`` is refused (GradScaler's scaled gradients would be
clipped, so C would bound the scaled gradient; bf16 and fp32 work); ``grad_accum`` splits a
step's Poisson batch into micro-batches of at most ``train.batch_size`` rows (clipped sums
accumulate, noise is added once per step). The local hooks (FedProx's proximal term, SCAFFOLD's
correction) are functions of the parameters alone, so their gradient terms are added to the
noised gradient: post-processing, at no privacy cost.
"""

from __future__ import annotations

import math
import secrets
import types
from collections.abc import Iterator

import torch

from fedumm.config import PrivacyConfig, TrainConfig
from fedumm.errors import ConfigError

MISSING_EXTRA = "privacy.level=sample needs the privacy extra: pip install 'fedumm[privacy]'"


def _opacus() -> types.SimpleNamespace:
    """Opacus, loaded on first use: importing it costs seconds that a run without DP-SGD (and
    every FLARE site process) should not pay."""
    try:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return types.SimpleNamespace(
        RDPAccountant=RDPAccountant,
        get_noise_multiplier=get_noise_multiplier,
        GradSampleModule=GradSampleModule,
        DPOptimizer=DPOptimizer,
        UniformWithReplacementSampler=UniformWithReplacementSampler,
    )


def expected_batch_size(train: TrainConfig) -> int:
    """L: rows one DP-SGD step expects, the same effective batch as a plain step."""
    return train.batch_size * train.grad_accum


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The z that reaches ``target_epsilon`` (RDP, at ``delta``) after ``steps`` steps at rate q,
    found by Opacus's binary search to 0.1% of the target (never above it)."""
    return _opacus().get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant="rdp",
        epsilon_tolerance=target_epsilon * 1e-3,
    )


class SampleDP:
    """One client's DP-SGD parameters and its accountant, kept across rounds."""

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        batch_size: int,
        delta: float,
        seeded_noise: bool = True,
    ):
        _opacus()  # the extra is there, or the one line that says what to install
        self.seeded_noise = seeded_noise  # privacy.seeded_noise: false = the noise from OS entropy
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.sample_rate = sample_rate
        self.expected_batch_size = batch_size
        self.delta = delta
        self.accountant = _opacus().RDPAccountant()

    @classmethod
    def create(
        cls, privacy: PrivacyConfig, train: TrainConfig, num_rows: int, rounds: int, steps_per_round: int
    ) -> SampleDP:
        """From the run config for a client with ``num_rows`` training rows.

        ``privacy.target_epsilon`` is met after ``rounds x steps_per_round`` steps: the
        conservative plan that the client takes part in every round (a client sampled less
        often spends less)."""
        _opacus()  # the extra is there, or the one line that says what to install
        if train.precision == "fp16":
            raise ConfigError(
                "privacy.level=sample: train.precision=fp16 is not supported (per-row clipping would bound "
                "GradScaler's scaled gradients); use bf16 or fp32"
            )
        if num_rows < 1:
            raise ConfigError("privacy.level=sample: the client has no training rows")
        batch = min(expected_batch_size(train), num_rows)  # q = 1 at most: then every row, every step
        rate = batch / num_rows
        if privacy.noise_multiplier is not None:
            z = privacy.noise_multiplier
        else:
            assert privacy.target_epsilon is not None  # PrivacyConfig requires one of the two
            z = noise_for_target(privacy.target_epsilon, privacy.delta, rate, rounds * steps_per_round)
        return cls(z, float(privacy.clip_norm), rate, batch, privacy.delta, privacy.seeded_noise)

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default privacy.delta): 0 before any step,
        infinite when z = 0."""
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return self.accountant.get_epsilon(self.delta if delta is None else delta)

    def metrics(self) -> dict[str, float]:
        return {"dp_epsilon": self.epsilon(), "dp_noise_multiplier": self.noise_multiplier}


def check_supported(model: torch.nn.Module) -> None:
    """ConfigError naming the first trainable module Opacus cannot give per-row gradients:
    a type without an Opacus grad sampler (its functorch fallback would vmap a whole module,
    e.g. a model class owning a bare parameter) or one with buffers (batch statistics mix rows)."""
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        kind = type(module).__name__
        if type(module) not in _opacus().GradSampleModule.GRAD_SAMPLERS:
            reason = "Opacus has no per-sample gradient rule for this layer type"
        elif _opacus().GradSampleModule.validate(module, strict=False):
            reason = "it has buffers, which Opacus does not support in a trained layer"
        else:
            continue
        supported = sorted(
            {c.__name__ for c in _opacus().GradSampleModule.GRAD_SAMPLERS if c.__module__.startswith("torch")}
        )
        raise ConfigError(
            f"privacy.level=sample: trainable module {name or '<root>'!r} ({kind}): {reason}; train only "
            f"modules of the types {', '.join(supported)} (finetune, adapter.target_modules) or use "
            "privacy.level=client"
        )


class DPSGD:
    """DP-SGD attached to ``model`` for one local round: Poisson batches, per-row gradients,
    clipping, noise and the accountant's step. ``close`` detaches it (hooks and attributes)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: SampleDP,
        num_rows: int,
        max_rows: int,
        seed: int,
    ):
        check_supported(model)
        self.state = state
        self.max_rows = max_rows
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.names = {id(p): name for name, p in model.named_parameters()}  # for error messages
        # "mean": the loss is the batch mean of the rows' losses; Opacus scales back to per-row
        # gradients and divides the noised sum by the expected (not the drawn) batch size.
        self.module = _opacus().GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        self.optimizer = _opacus().DPOptimizer(
            optimizer,
            noise_multiplier=state.noise_multiplier,
            max_grad_norm=state.clip_norm,
            expected_batch_size=state.expected_batch_size,
            loss_reduction="mean",
            generator=torch.Generator().manual_seed(seed + 1 if state.seeded_noise else secrets.randbits(63)),
        )
        self.optimizer.attach_step_hook(state.accountant.get_optimizer_hook_fn(sample_rate=state.sample_rate))
        self.sampler = _opacus().UniformWithReplacementSampler(
            num_samples=num_rows, sample_rate=state.sample_rate, generator=torch.Generator().manual_seed(seed)
        )
        self._batches = self._endless()

    def _endless(self) -> Iterator[list[int]]:
        while True:
            yield from self.sampler

    def next_step(self) -> list[list[int]]:
        """The next step's Poisson batch as micro-batches of at most ``max_rows`` rows (one
        empty micro-batch when no row was drawn: the step still adds noise and counts)."""
        rows = list(next(self._batches))
        return [rows[i : i + self.max_rows] for i in range(0, len(rows), self.max_rows)] or [[]]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def sample_norms(self) -> torch.Tensor:
        """L2 norm of each row's gradient over all trainable tensors, before clipping."""
        flat = [g.reshape(len(g), -1) for g in self.optimizer.grad_samples]
        return torch.cat(flat, dim=1).norm(dim=1)

    def end_micro_batch(self, rows: int, last: bool) -> None:
        """Clip this micro-batch's per-row gradients into the step's sum; on the step's last one,
        add the noise, divide by L and count the step in the accountant (``p.grad`` is then the
        private gradient)."""
        if rows == 0:
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        for p in self.params:
            if not isinstance(p.grad_sample, torch.Tensor):
                raise ConfigError(
                    f"privacy.level=sample: trainable tensor {self.names.get(id(p))!r} got no per-sample "
                    "gradient in this micro-batch (it is not used by the loss); freeze it"
                )
            got = p.grad_sample.shape[0]
            if got != rows:
                raise ConfigError(
                    f"privacy.level=sample: trainable tensor {self.names.get(id(p))!r} got per-sample gradients "
                    f"for {got} rows in a batch of {rows}: the module that holds it does not keep rows on the "
                    "first dimension (e.g. a vision tower or connector over flattened patches); freeze it or use "
                    "privacy.level=client"
                )
        if not last:
            self.optimizer.signal_skip_step(True)
        self.optimizer.pre_step()
        if not last:
            for p in self.params:
                p.grad_sample = None

    def close(self) -> None:
        self.module.cleanup()
        for p in self.params:
            if hasattr(p, "summed_grad"):
                del p.summed_grad
