"""Memory options of the shared load path: quantization errors, gradient checkpointing, bf16."""

from __future__ import annotations

import pytest
import torch

from fedumm.adapters import apply_lora, trainable_parameters
from fedumm.config import AdapterConfig, ModelConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.models import loading
from fedumm.models.registry import get_backend
from fedumm.validation import load_run_config


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
@pytest.mark.parametrize(("name", "backend_name"), [("tiny-llava", "hf_vlm"), ("tiny-blip-vqa", "blip_vqa")])
def test_quantization_on_cpu_is_a_config_error(mode, name, backend_name):
    from fedumm.models.tiny import resolve_model_path

    backend = get_backend(backend_name)(
        ModelConfig(backend=backend_name, name_or_path=resolve_model_path(name), device="cpu", quantization=mode)
    )
    with pytest.raises(ConfigError, match=rf"model.quantization: '{mode}' needs a CUDA GPU .* device is cpu"):
        backend.load()


def test_quantization_without_bitsandbytes_is_a_config_error(monkeypatch):
    monkeypatch.setattr(loading, "bitsandbytes_available", lambda: False)
    config = ModelConfig(quantization="4bit", device="cpu")
    with pytest.raises(ConfigError, match="model.quantization: '4bit' needs the bitsandbytes package"):
        loading.quantization_config(config, torch.device("cuda"))


def test_quantization_config_when_bitsandbytes_can_run(monkeypatch):
    monkeypatch.setattr(loading, "bitsandbytes_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    four = loading.quantization_config(
        ModelConfig(quantization="4bit", device="cpu"), torch.device("cuda"), ["vision_tower"]
    )
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert four.llm_int8_skip_modules == ["vision_tower"]
    eight = loading.quantization_config(ModelConfig(quantization="8bit", device="cpu"), torch.device("cuda"))
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert loading.quantization_config(ModelConfig(device="cpu"), torch.device("cuda")) is None


def test_quantization_error_surfaces_from_a_run_config(tmp_path, tiny_llava_path):
    from fedumm.engines.simulation import simulate

    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "model.quantization=8bit",
            f"output.dir={tmp_path}",
            "output.progress=false",
        ],
    )
    with pytest.raises(ConfigError, match="model.quantization"):
        simulate(config)


def _loss_and_grads(name: str, backend_name: str, **overrides):
    from fedumm.models.tiny import resolve_model_path

    backend = get_backend(backend_name)(
        ModelConfig(backend=backend_name, name_or_path=resolve_model_path(name), device="cpu", **overrides)
    )
    torch.manual_seed(0)
    model = apply_lora(backend.load(), AdapterConfig(dropout=0.0), backend.lora_target_regex(AdapterConfig()))
    model.train()
    loss = backend.loss(model, backend.to_device(backend.training_batch(make_synthetic_vqa(4, seed=5))))
    loss.backward()
    grads = {k: p.grad for k, p in trainable_parameters(model).items()}
    return model, loss, grads


@pytest.mark.parametrize(("name", "backend_name"), [("tiny-llava", "hf_vlm"), ("tiny-blip-vqa", "blip_vqa")])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name, backend_name):
    model, loss, grads = _loss_and_grads(name, backend_name, gradient_checkpointing=True)
    assert model.get_base_model().is_activation_checkpointing
    assert torch.isfinite(loss)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())
    _, plain_loss, plain_grads = _loss_and_grads(name, backend_name)
    assert torch.allclose(loss, plain_loss, atol=1e-6)
    for key, grad in grads.items():
        assert torch.allclose(grad, plain_grads[key], atol=1e-6), key


def test_bfloat16_base_trains_float32_lora():
    model, loss, grads = _loss_and_grads("tiny-llava", "hf_vlm", dtype="bfloat16")
    base = model.get_base_model()
    assert base.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainable_parameters(model).values())
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())


def test_model_without_checkpointing_support_is_a_config_error():
    class Plain(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(ConfigError, match="model.gradient_checkpointing: Plain does not support"):
        loading.enable_gradient_checkpointing(Plain())


def test_sdpa_and_eager_attention_give_the_same_loss_and_gradients():
    # Prepare / Execute: the tiny LLaVA loaded with each attention kernel.
    sdpa, loss, grads = _loss_and_grads("tiny-llava", "hf_vlm", attn_implementation="sdpa")
    eager, eager_loss, eager_grads = _loss_and_grads("tiny-llava", "hf_vlm", attn_implementation="eager")
    # Assert
    assert sdpa.get_base_model().config.text_config._attn_implementation == "sdpa"
    assert eager.get_base_model().config.text_config._attn_implementation == "eager"
    assert torch.allclose(loss, eager_loss, atol=1e-5)
    for key, grad in grads.items():
        assert torch.allclose(grad, eager_grads[key], atol=1e-5), key


def test_sdpa_on_a_family_without_it_is_a_config_error():
    # BLIP's attention has no SDPA path in transformers; auto (the default) loads it eagerly.
    with pytest.raises(ConfigError, match=r"model.attn_implementation: .* does not support 'sdpa' attention"):
        _loss_and_grads("tiny-blip-vqa", "blip_vqa", attn_implementation="sdpa")


def test_quantization_without_bitsandbytes_names_the_qlora_extra(monkeypatch):
    monkeypatch.setattr(loading, "bitsandbytes_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        loading.quantization_config(ModelConfig(quantization="4bit", device="cpu"), torch.device("cuda"))
    assert "pip install 'fedumm[qlora]'" in str(info.value) and "\n" not in str(info.value)
