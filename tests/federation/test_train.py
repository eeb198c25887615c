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


class _TaskToy(torch.nn.Module):
    """One weight per task: loss of a batch of task t is 0.5 * (w_t - 1)^2, so a plain SGD step
    moves w_t by lr * weight_t * (1 - w_t) and leaves the other task's weight alone."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


class _TaskBackend:
    device = torch.device("cpu")
    seen: list[list[str]]

    def __init__(self):
        self.seen = []

    def training_session(self, seed, config):
        import contextlib

        return contextlib.nullcontext()

    def training_batch(self, rows):
        tasks = [r.get("task", "vqa") for r in rows]
        if len(set(tasks)) > 1:
            raise ValueError(f"a batch mixes tasks {sorted(set(tasks))}")
        self.seen.append(tasks)
        return {"index": torch.tensor(1 if tasks[0] == "t2i" else 0)}

    def to_device(self, batch):
        return batch

    def loss(self, model, batch):
        return 0.5 * (model.w[batch["index"]] - 1.0) ** 2


def test_mixed_rows_train_in_one_task_batches_covering_every_row():
    # Prepare: 5 vqa rows (no task column: the default task) and 3 t2i rows, batches of 2.
    rows = [{"i": i} for i in range(5)] + [{"i": 5 + i, "task": "t2i"} for i in range(3)]
    backend = _TaskBackend()
    config = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0, max_grad_norm=None, batch_size=2)
    # Execute: one epoch = ceil(8 / 2) = 4 steps, but one-task batches need 3 + 2 = 5 for the epoch.
    train_local(_TaskToy(), backend, rows, config.model_copy(update={"local_steps": 5}), seed=0)
    # Assert: no batch mixes tasks; the first 5 batches are one epoch: 3 vqa batches, 2 t2i batches.
    sizes = sorted((batch[0], len(batch)) for batch in backend.seen)
    assert sizes == [("t2i", 1), ("t2i", 2), ("vqa", 1), ("vqa", 2), ("vqa", 2)]


def test_task_loss_weights_scale_each_tasks_step():
    # Prepare: one vqa row and one t2i row, batch 1, 2 steps of plain SGD (lr 0.1), t2i weighted 0.5.
    rows = [{"task": "vqa"}, {"task": "t2i"}]
    config = TrainConfig(
        optimizer="sgd",
        lr=0.1,
        weight_decay=0,
        max_grad_norm=None,
        batch_size=1,
        local_steps=2,
        task_loss_weights={"vqa": 1.0, "t2i": 0.5},
    )
    model = _TaskToy()
    activated: list[str] = []
    # Execute
    train_local(model, _TaskBackend(), rows, config, seed=0, activate=activated.append)
    # Assert: w_vqa = 0.1 * 1 * (1 - 0) = 0.1; w_t2i = 0.1 * 0.5 * (1 - 0) = 0.05; each batch activated its task.
    assert model.w.tolist() == pytest.approx([0.1, 0.05])
    assert sorted(activated) == ["t2i", "vqa"]


def test_sample_level_privacy_refuses_a_client_with_two_tasks():
    from fedumm.errors import TrainingError

    with pytest.raises(TrainingError, match="privacy.level=sample .* mix this client's tasks \\(t2i, vqa\\)"):
        train_local(_TaskToy(), _TaskBackend(), [{"task": "vqa"}, {"task": "t2i"}], TrainConfig(), 0, dp=object())
