import pytest
import torch

from fedumm.adapters import get_adapter_state
from fedumm.config import TrainConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.federation.train import plan_steps, train_local
from fedumm.types import LocalHooks


@pytest.mark.parametrize(
    ("num_samples", "overrides", "expected"),
    [
        (100, {"batch_size": 8}, 13),  # ceil(100/8)
        (100, {"batch_size": 8, "local_epochs": 3}, 39),  # 13 batches x 3 epochs
        (100, {"batch_size": 8, "grad_accum": 4}, 4),  # ceil(13/4)
        (100, {"batch_size": 8, "local_steps": 5}, 5),  # explicit steps win
        (3, {"batch_size": 8}, 1),
    ],
)
def test_plan_steps(num_samples, overrides, expected):
    assert plan_steps(num_samples, TrainConfig(**overrides)) == expected


def test_only_adapter_tensors_change_and_loss_falls(lora_model):
    model, backend = lora_model
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapter_before = get_adapter_state(model)
    samples = make_synthetic_vqa(16, seed=3)
    config = TrainConfig(lr=5e-3, batch_size=8, local_epochs=6)

    result = train_local(model, backend, samples, config, seed=0)

    assert result.steps == 12 and result.num_samples == 16
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, base_before[name]), name
    after = get_adapter_state(model)
    assert any(not torch.equal(after[k], adapter_before[k]) for k in after)
    # A second pass on the same data starts from a lower loss than the first.
    again = train_local(model, backend, samples, TrainConfig(lr=5e-3, batch_size=8), seed=1)
    assert again.mean_loss < result.mean_loss


def test_same_seed_gives_the_same_adapter(model_config):
    from fedumm.adapters import apply_lora
    from fedumm.config import AdapterConfig
    from fedumm.models.registry import get_backend

    samples = make_synthetic_vqa(8, seed=4)
    states = []
    for _ in range(2):
        backend = get_backend("hf_vlm")(model_config)
        torch.manual_seed(0)
        model = apply_lora(backend.load(), AdapterConfig(), backend.lora_target_regex(AdapterConfig()))
        train_local(model, backend, samples, TrainConfig(batch_size=4, local_epochs=2), seed=7)
        states.append(get_adapter_state(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_hooks_add_loss_and_see_gradients(lora_model):
    model, backend = lora_model

    class Recorder(LocalHooks):
        def __init__(self):
            self.grad_norms = []

        def extra_loss(self, params):
            return 1000.0 * sum((p**2).sum() for p in params.values())

        def after_backward(self, params):
            self.grad_norms.append(sum(p.grad.norm().item() for p in params.values()))

    hooks = Recorder()
    plain = train_local(model, backend, make_synthetic_vqa(4, seed=5), TrainConfig(batch_size=4), 0)
    hooked = train_local(model, backend, make_synthetic_vqa(4, seed=5), TrainConfig(batch_size=4), 0, hooks)
    assert len(hooks.grad_norms) == 1 and hooks.grad_norms[0] > 0
    assert hooked.mean_loss > plain.mean_loss + 1.0  # the penalty on the LoRA A weights shows
