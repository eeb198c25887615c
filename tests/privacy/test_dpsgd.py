"""DP-SGD at privacy.level=sample (fedumm.privacy.dpsgd): per-row clipping, the noise scale,
the accountant across rounds, target epsilon, the wiring into train_local and ClientRuntime,
and the errors for what Opacus cannot train. A linear model with a hand-made backend makes
the numbers checkable; the tiny LLaVA checks the real model path."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedumm import codec
from fedumm.adapters import copy_state, load_state, trainable_parameters
from fedumm.config import ModelConfig, PrivacyConfig, TrainConfig
from fedumm.data.federated import ClientData
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.federation import ClientRuntime
from fedumm.federation.train import make_sample_dp, train_local
from fedumm.models.registry import get_backend
from fedumm.models.tiny import resolve_model_path
from fedumm.privacy.dpsgd import DPSGD, SampleDP, check_supported
from fedumm.types import LocalHooks
from fedumm.validation import load_run_config

DIM_IN, DIM_OUT = 6, 3


class LinearBackend:
    """Rows {"x": [...], "y": [...]}; a row's loss is ||W x + b - y||^2."""

    device = torch.device("cpu")

    def training_session(self, seed, config):
        return contextlib.nullcontext()  # the Backend contract's hook around a local run

    def training_batch(self, samples):
        return {k: torch.tensor([s[k] for s in samples], dtype=torch.float32) for k in ("x", "y")}

    def to_device(self, batch):
        return batch

    def sample_losses(self, model, batch):
        return ((model(batch["x"]) - batch["y"]) ** 2).sum(dim=1)

    def loss(self, model, batch):
        return self.sample_losses(model, batch).mean()


def linear_rows(n: int, seed: int = 0, scale: float = 3.0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM_IN, generator=gen) * scale
    y = torch.randn(n, DIM_OUT, generator=gen) * scale
    return [{"x": xi.tolist(), "y": yi.tolist()} for xi, yi in zip(x, y)]


def linear_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIM_IN, DIM_OUT))


def sample_dp(z: float, clip: float, rate: float, batch: int) -> SampleDP:
    return SampleDP(noise_multiplier=z, clip_norm=clip, sample_rate=rate, batch_size=batch, delta=1e-5)


def sgd_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "max_grad_norm": None, **overrides})


def test_each_rows_clipped_gradient_is_at_most_c():
    # Prepare: rows large enough that some gradients exceed C = 20, one row per micro-batch so
    # the growth of Opacus's clipped sum is exactly that row's clipped gradient.
    model, backend, clip = linear_model(), LinearBackend(), 20.0
    rows = linear_rows(8, scale=1.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dpsgd = DPSGD(model, optimizer, sample_dp(0.0, clip, 1.0, 8), num_rows=8, max_rows=1, seed=0)
    raw, clipped = [], []
    try:
        dpsgd.zero_grad()
        previous = [torch.zeros_like(p) for p in model.parameters()]
        # Execute
        for i, row in enumerate(rows):
            backend.sample_losses(model, backend.training_batch([row])).mean().backward()
            raw.append(dpsgd.sample_norms().item())
            dpsgd.end_micro_batch(1, last=i == len(rows) - 1)
            summed = [p.summed_grad.clone() for p in model.parameters()]
            clipped.append(torch.cat([(s - q).flatten() for s, q in zip(summed, previous)]).norm().item())
            previous = summed
    finally:
        dpsgd.close()
    # Assert: clipping did something, never exceeds C, and leaves small gradients alone.
    raw_t, clipped_t = torch.tensor(raw), torch.tensor(clipped)
    assert raw_t.max() > 1.5 * clip and raw_t.min() < clip, raw
    assert bool((clipped_t <= clip * (1 + 1e-5)).all()), clipped
    assert torch.allclose(clipped_t, raw_t.clamp(max=clip), rtol=1e-4)
    assert not hasattr(next(model.parameters()), "grad_sample")  # close() detached Opacus


def test_noise_on_the_summed_gradient_has_std_z_times_c():
    # Prepare: zero-gradient data, so the step's gradient is the noise / L alone.
    z, clip, batch = 1.3, 0.7, 4
    model = torch.nn.Sequential(torch.nn.Linear(50, 40))  # 2040 noise values per step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dpsgd = DPSGD(model, optimizer, sample_dp(z, clip, 0.5, batch), num_rows=8, max_rows=8, seed=3)
    draws = []
    try:
        # Execute
        for _ in range(20):
            dpsgd.zero_grad()
            (0.0 * model(torch.randn(batch, 50)).sum(dim=1)).mean().backward()
            dpsgd.end_micro_batch(batch, last=True)
            draws.append(torch.cat([p.grad.flatten() for p in model.parameters()]) * batch)
    finally:
        dpsgd.close()
    noise = torch.cat(draws)
    # Assert: std z C within 2% (about 6 standard errors over 40800 draws), mean about 0.
    assert noise.std().item() == pytest.approx(z * clip, rel=0.02)
    assert abs(noise.mean().item()) < 0.02 * z * clip


def run_config(*overrides: str):
    return load_run_config(
        None, ["train.optimizer=sgd", "train.weight_decay=0", "eval.clients=false", "privacy.level=sample", *overrides]
    )


class LinearHost:
    """The slice of ModelHost that ClientRuntime.fit uses, over one nn.Linear."""

    local_units: list[str] = []
    per_task = False

    def __init__(self):
        self.model, self.backend = linear_model(), LinearBackend()

    def configure(self, plan):
        pass

    def parameters_of(self, units=None):
        return trainable_parameters(self.model)

    def set_state(self, state, units=None):
        load_state(self.parameters_of(), state, "linear state")

    def get_state(self, units=None):
        return copy_state(self.parameters_of())

    def train(self, samples, config, seed, hooks, progress, description, dp=None):
        return train_local(self.model, self.backend, samples, config, seed, hooks, progress, description, dp)


def test_client_epsilon_after_k_rounds_matches_opacus():
    # Prepare: 20 rows, batch 4 (q = 0.2), z = 0.9, 3 rounds of 5 local steps.
    rounds, steps, z, rate = 3, 5, 0.9, 0.2
    config = run_config(
        "privacy.noise_multiplier=0.9", "privacy.clip_norm=1.0", "train.batch_size=4", f"train.local_steps={steps}"
    )
    host = LinearHost()
    runtime = ClientRuntime(ClientData(0, linear_rows(20), []), host, config)
    # Execute
    replies = []
    for round_num in range(1, rounds + 1):
        message = codec.encode_message({"state": host.get_state(), "extras": {}}, "float32")
        replies.append(runtime.fit(message, round_num))
    # Assert: the accountant spans the rounds and equals an independent RDP accountant.
    expected = RDPAccountant()
    expected.history = [(z, rate, rounds * steps)]
    after_one = RDPAccountant()
    after_one.history = [(z, rate, steps)]
    assert replies[-1].metrics["dp_epsilon"] == pytest.approx(expected.get_epsilon(1e-5), rel=1e-9)
    assert replies[0].metrics["dp_epsilon"] == pytest.approx(after_one.get_epsilon(1e-5), rel=1e-9)
    assert replies[-1].metrics["dp_noise_multiplier"] == z
    assert runtime.sample_dp.accountant.history == [(z, rate, rounds * steps)]


def test_target_epsilon_is_met_after_the_planned_steps():
    # Prepare: 50 rows, batch 5 (q = 0.1), 2 epochs a round (20 steps), 4 rounds planned.
    config = run_config(
        "privacy.target_epsilon=2.0", "federation.rounds=4", "train.batch_size=5", "train.local_epochs=2"
    )
    # Execute
    dp = make_sample_dp(config, 50)
    # Assert: the planned 80 steps spend the target to 1%.
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, 0.1, 80)]
    assert dp.sample_rate == pytest.approx(0.1)
    assert accountant.get_epsilon(1e-5) == pytest.approx(2.0, rel=0.01)
    assert dp.noise_multiplier > 0.5


def test_no_noise_and_large_c_equals_plain_sgd_with_a_proximal_hook():
    # Prepare: q = 1 (batch = all rows), z = 0, C huge, and a FedProx-like extra loss, so the
    # DP step is the plain step if clipping, noise, scaling and the hook's gradient are wired right.
    rows, config = linear_rows(6), sgd_config(batch_size=6, local_steps=3)

    class Proximal(LocalHooks):
        def extra_loss(self, params):
            return 0.5 * sum((p**2).sum() for p in params.values())

    updates = []
    for dp in (None, sample_dp(0.0, 1e6, 1.0, 6)):
        model = linear_model()
        # Execute
        train_local(model, LinearBackend(), rows, config, seed=0, hooks=Proximal(), dp=dp)
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # Assert
    start = torch.cat([p.detach().flatten() for p in linear_model().parameters()])
    assert (updates[0] - start).abs().max() > 0.1
    assert torch.allclose(updates[0], updates[1], rtol=1e-5, atol=1e-6)


def test_empty_poisson_batches_still_add_noise_and_count():
    # Prepare: 40 rows, batch 1: q = 0.025, so most steps draw no row.
    model, dp = linear_model(), sample_dp(1.0, 1.0, 0.025, 1)
    before = model[0].weight.detach().clone()
    # Execute
    result = train_local(model, LinearBackend(), linear_rows(40), sgd_config(batch_size=1, local_steps=30), 0, dp=dp)
    # Assert: every step counted and moved the weights (the noise), whatever was drawn.
    assert dp.accountant.history == [(1.0, 0.025, 30)]
    assert not torch.equal(model[0].weight, before)
    assert result.steps == 30 and result.privacy["dp_epsilon"] > 0


def test_grad_accum_splits_the_poisson_batch_into_micro_batches():
    # Prepare: L = 3 x 2 = 6 of 6 rows (q = 1), micro-batches of 3; z = 0, C huge.
    rows = linear_rows(6)
    models = [linear_model(), linear_model()]
    # Execute
    train_local(models[0], LinearBackend(), rows, sgd_config(batch_size=6, local_steps=2), 0)
    dp = sample_dp(0.0, 1e6, 1.0, 6)
    train_local(models[1], LinearBackend(), rows, sgd_config(batch_size=3, grad_accum=2, local_steps=2), 0, dp=dp)
    # Assert: two micro-batches sum to the one full-batch step, and count as one step each.
    assert torch.allclose(models[0][0].weight, models[1][0].weight, rtol=1e-5, atol=1e-6)
    assert dp.accountant.history == [(0.0, 1.0, 2)]


def test_fp16_is_refused_and_z_zero_means_infinite_epsilon():
    with pytest.raises(ConfigError, match="fp16"):
        SampleDP.create(PrivacyConfig(level="sample", noise_multiplier=1.0), TrainConfig(precision="fp16"), 100, 2, 3)
    dp = SampleDP.create(PrivacyConfig(level="sample", noise_multiplier=0.0), TrainConfig(batch_size=10), 100, 2, 3)
    assert dp.epsilon() == 0.0 and dp.sample_rate == pytest.approx(0.1)
    dp.accountant.step(noise_multiplier=0.0, sample_rate=0.1)
    assert math.isinf(dp.epsilon())


def test_a_trained_module_without_a_grad_sampler_is_named():
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(3))

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), Scale())
    with pytest.raises(ConfigError, match=r"trainable module '1' \(Scale\).*no per-sample gradient rule"):
        check_supported(model)
    model[1].gain.requires_grad_(False)
    check_supported(model)  # a frozen module of any type is fine


def reset(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    load_state(params, state, "reset")


def test_tiny_llava_trains_under_dp_and_matches_sgd_without_noise(lora_model):
    # Prepare: tiny LLaVA with LoRA; 8 rows whose answers all have one word (equal answer
    # lengths, so the rows' mean loss is the batch's token-mean loss).
    model, backend = lora_model
    params = trainable_parameters(model)
    initial = copy_state(params)
    samples = [s for s in make_synthetic_vqa(40, seed=3) if len(backend.answer_ids(s["multiple_choice_answer"])) == 2]
    samples = samples[:8]
    assert len(samples) == 8
    one_step = sgd_config(lr=0.05, batch_size=8, local_steps=1)

    # Execute: plain SGD, then DP-SGD with z = 0, C huge, q = 1, from the same start.
    train_local(model, backend, samples, one_step, seed=0)
    plain = copy_state(params)
    reset(params, initial)
    train_local(model, backend, samples, one_step, seed=0, dp=sample_dp(0.0, 1e6, 1.0, 8))
    private = copy_state(params)

    # Assert: the same update (the LoRA B matrices start at zero, so compare the moved tensors).
    moved = [k for k in plain if not torch.equal(plain[k], initial[k])]
    assert moved
    for key in moved:
        assert torch.allclose(private[key] - initial[key], plain[key] - initial[key], rtol=1e-3, atol=1e-7), key

    # Execute: two noisy "rounds" of 4 AdamW steps on the same accountant.
    reset(params, initial)
    before = rows_loss(model, backend, samples)
    dp = sample_dp(0.2, 1.0, 0.5, 4)
    config = TrainConfig(lr=0.02, batch_size=4, local_steps=4)
    first = train_local(model, backend, samples, config, seed=1, dp=dp)
    second = train_local(model, backend, samples, config, seed=2, dp=dp)

    # Assert: the loss fell (about 5.8 -> 3.5), the accountant saw both rounds.
    assert rows_loss(model, backend, samples) < before - 1.0
    assert second.mean_loss < first.mean_loss
    assert dp.accountant.history == [(0.2, 0.5, 8)]
    assert second.privacy["dp_epsilon"] > first.privacy["dp_epsilon"] > 0


def rows_loss(model, backend, samples) -> float:
    with torch.no_grad():
        return backend.sample_losses(model, backend.to_device(backend.training_batch(samples))).mean().item()


def test_a_family_opacus_cannot_train_fails_before_training():
    # Prepare: tiny LLaVA-NeXT's connector group includes image_newline, a bare parameter on
    # LlavaNextModel itself, which Opacus has no per-sample rule for.
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=resolve_model_path("tiny-llava-next"), device="cpu"))
    model = backend.load()
    model.model.image_newline.requires_grad_(True)
    before = model.model.image_newline.detach().clone()
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"'model' \(LlavaNextModel\)"):
        train_local(
            model, backend, make_synthetic_vqa(4, seed=0), sgd_config(batch_size=2), 0, dp=sample_dp(1, 1, 0.5, 2)
        )
    assert torch.equal(model.model.image_newline, before)
    assert not hasattr(model.model.image_newline, "grad_sample")
