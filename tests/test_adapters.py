import pytest
import torch

from fedumm.adapters import (
    apply_lora,
    count_parameters,
    full_model_nbytes,
    get_adapter_state,
    lora_base_weights,
    set_adapter_state,
)
from fedumm.config import AdapterConfig
from fedumm.errors import AdapterStateError, ConfigError


def test_default_targets_are_language_side_qkv_only(lora_model):
    model, _ = lora_model
    state = get_adapter_state(model)
    # 2 decoder layers x {q,k,v} x {lora_A, lora_B}
    assert len(state) == 12
    assert all(".language_model." in k for k in state)
    assert not any("vision_tower" in k for k in state)
    assert {k.split(".")[-3] for k in state} == {"q_proj", "k_proj", "v_proj"}
    # r=16 on 64x64 projections: A is 16x64, B is 64x16 -> 2048 per module, 6 modules.
    assert count_parameters(model)[0] == 12_288


def test_keys_are_canonical(lora_model):
    model, _ = lora_model
    for key in get_adapter_state(model):
        assert not key.startswith("base_model.model.")
        assert ".default." not in key
        assert key.endswith((".lora_A.weight", ".lora_B.weight"))


def test_state_is_a_detached_cpu_copy(lora_model):
    model, _ = lora_model
    state = get_adapter_state(model)
    key = next(k for k in state if "lora_A" in k)
    before = state[key].clone()
    state[key].add_(1.0)  # mutating the copy must not touch the model
    assert torch.equal(get_adapter_state(model)[key], before)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())


def test_round_trip_sets_exact_values(lora_model):
    model, _ = lora_model
    new = {k: torch.full_like(v, 0.25) for k, v in get_adapter_state(model).items()}
    set_adapter_state(model, new)
    assert all(torch.equal(v, new[k]) for k, v in get_adapter_state(model).items())


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: s.pop(sorted(s)[0]), "1 missing key"),
        (lambda s: s.__setitem__("extra.lora_A.weight", torch.zeros(1)), "1 unexpected key"),
        (lambda s: s.__setitem__(sorted(s)[0], torch.zeros(3, 3)), "shape mismatch"),
    ],
)
def test_strict_load_fails_and_writes_nothing(lora_model, mutate, fragment):
    model, _ = lora_model
    original = get_adapter_state(model)
    bad = {k: torch.ones_like(v) for k, v in original.items()}
    mutate(bad)
    with pytest.raises(AdapterStateError, match=fragment):
        set_adapter_state(model, bad)
    after = get_adapter_state(model)
    assert all(torch.equal(after[k], original[k]) for k in original)


def test_unmatched_target_regex_is_a_config_error(model_config):
    from fedumm.models.registry import get_backend

    backend = get_backend("hf_vlm")(model_config)
    with pytest.raises(ConfigError, match="adapter.target_modules: '.*nothing_here'"):
        apply_lora(backend.load(), AdapterConfig(), ".*nothing_here")


def test_full_model_bytes_counts_base_weights_only(lora_model):
    model, _ = lora_model
    trainable, total = count_parameters(model)
    assert full_model_nbytes(model) == 4 * (total - trainable)  # float32 base weights


class _Block(torch.nn.Module):
    """A module with a bare parameter of its own next to children of different groups, as
    LlavaNextModel holds image_newline next to the vision tower and the language model."""

    def __init__(self):
        super().__init__()
        self.newline = torch.nn.Parameter(torch.zeros(4))
        self.projector = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 4))
        self.tower = torch.nn.Linear(4, 4)
        self.embeddings = torch.nn.Module()
        self.embeddings.cls = torch.nn.Parameter(torch.zeros(4))  # own parameter + a child, one group
        self.embeddings.patch = torch.nn.Linear(4, 4)


@pytest.mark.parametrize(
    ("pattern", "modules", "bare"),
    [
        # projector layers go to peft; the bare newline (its module also holds the tower) trains in place
        (r"(projector\..*|newline)", ["projector.0", "projector.2"], ["newline"]),
        (r"projector\..*", ["projector.0", "projector.2"], []),
        # a module with parameters of its own whose children are in the group too: the outer one only
        (r"embeddings\..*", ["embeddings"], []),
        (r"tower\..*", ["tower"], []),
        (r"nothing", [], []),
    ],
)
def test_group_layout_hands_peft_only_modules_wholly_in_the_group(pattern, modules, bare):
    from fedumm.adapters import group_layout

    assert group_layout(_Block(), pattern) == (modules, bare)


def test_peft_errors_on_matching_targets_are_passed_through(model_config):
    from fedumm.models.registry import get_backend

    backend = get_backend("hf_vlm")(model_config)
    # The regex matches a module (the final norm), but LoRA cannot wrap an RMSNorm.
    with pytest.raises(
        ConfigError,
        match=r"adapter.target_modules: peft cannot add LoRA on '.*norm': "
        r"Target module .*RMSNorm.* is not supported",
    ) as info:
        apply_lora(backend.load(), AdapterConfig(), r".*language_model\.norm")
    assert isinstance(info.value.__cause__, ValueError)


def test_no_lora_targets_wrap_only_the_modules_to_save(model_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from fedumm.models.registry import get_backend

    backend = get_backend("hf_vlm")(model_config)
    model = apply_lora(backend.load(), AdapterConfig(), None, ["model.multi_modal_projector.linear_1"])
    state = get_adapter_state(model)
    assert set(state) == {"model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.bias"}
    set_adapter_state(model, {k: torch.full_like(v, 0.5) for k, v in state.items()})
    model.save_pretrained(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(model_config.name_or_path), str(tmp_path / "adapter")
    )
    weight = dict(loaded.named_parameters())[
        "base_model.model.model.multi_modal_projector.linear_1.modules_to_save.default.weight"
    ]
    assert torch.equal(weight, torch.full_like(weight, 0.5))


def test_lora_base_weights_are_the_frozen_weights_under_each_b(lora_model):
    # Prepare: the B keys of the adapter; the frozen q_proj weight of layer 0 read from the model
    model, _ = lora_model
    keys = list(get_adapter_state(model))
    b_keys = [k for k in keys if ".lora_B." in k]
    q0 = next(k for k in b_keys if ".layers.0." in k and "q_proj" in k)
    frozen = dict(model.named_parameters())["base_model.model." + q0.replace(".lora_B.weight", ".base_layer.weight")]
    # Execute
    weights = lora_base_weights(model, keys)
    # Assert: one per B key, (out, in) = (64, 64), a float32 CPU copy equal to the frozen weight
    assert sorted(weights) == sorted(b_keys)
    assert weights[q0].shape == (64, 64) and weights[q0].dtype == torch.float32
    assert torch.equal(weights[q0], frozen.detach().float())
    weights[q0].add_(1.0)
    assert not torch.equal(weights[q0], frozen.detach().float())  # a copy
