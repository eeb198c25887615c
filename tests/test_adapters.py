import pytest
import torch

from fedumm.adapters import (
    apply_lora,
    count_parameters,
    full_model_nbytes,
    get_adapter_state,
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
