"""model.compose: a LLaVA model from a CLIP/SigLIP vision encoder and a causal LM, built once into
the model cache, saved and reloaded as an ordinary LLaVA checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedumm.config import ComposeConfig, ModelConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.models import compose as compose_module
from fedumm.models.compose import IMAGE_TOKEN, composed_checkpoint
from fedumm.models.registry import get_backend
from fedumm.models.tiny.common import vision_dims
from fedumm.models.tiny.parts import build_tiny_clip_vision, build_tiny_llama
from fedumm.validation import load_run_config


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP vision model and a tiny Llama causal LM, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("parts")
    vision, language = root / "clip", root / "llama"
    vision.mkdir()
    language.mkdir()
    build_tiny_clip_vision(vision, seed=1)
    build_tiny_llama(language, seed=2)
    return {"vision": vision, "language": language}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEDUMM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _compose(parts, **kwargs) -> ComposeConfig:
    return ComposeConfig(vision=str(parts["vision"]), language=str(parts["language"]), **kwargs)


def _load(folder):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder)


def _connector(folder) -> dict[str, torch.Tensor]:
    return _load(folder).model.multi_modal_projector.state_dict()


def test_the_composed_checkpoint_carries_both_parts_and_a_new_connector(parts, cache):
    from transformers import AutoTokenizer

    folder = Path(composed_checkpoint(_compose(parts, connector="mlp2x_gelu", seed=0)))
    assert folder.parent == cache / "composed"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llava" and config["projector_hidden_act"] == "gelu"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["text_config"]["model_type"] == "llama"
    assert config["vision_feature_select_strategy"] == "default" and config["vision_feature_layer"] == -2

    from transformers import CLIPVisionModel, LlamaForCausalLM

    composed = _load(folder)
    vision, language = (
        CLIPVisionModel.from_pretrained(parts["vision"]),
        LlamaForCausalLM.from_pretrained(parts["language"]),
    )
    tower = composed.model.vision_tower.state_dict()
    assert tower.keys() == vision.state_dict().keys()
    assert all(torch.equal(tower[k], v) for k, v in vision.state_dict().items())
    decoder, part_decoder = composed.model.language_model.state_dict(), language.model.state_dict()
    assert decoder.keys() == part_decoder.keys()
    part_vocab = part_decoder["embed_tokens.weight"].shape[0]
    for name, tensor in part_decoder.items():
        if name == "embed_tokens.weight":  # old rows kept, 2 rows added
            assert decoder[name].shape[0] == part_vocab + 2
            assert torch.equal(decoder[name][:part_vocab], tensor)
        else:
            assert torch.equal(decoder[name], tensor), name
    assert torch.equal(composed.lm_head.weight[:part_vocab], language.lm_head.weight)
    # 64 (CLIP) -> 64 -> 64 (Llama), freshly initialised.
    assert composed.model.multi_modal_projector.linear_1.weight.shape == (64, 64)

    # <image> and <pad> added (tiny-llama has neither), the ids in the config and the vocabulary.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == part_vocab + 2 == config["text_config"]["vocab_size"]
    assert config["image_token_index"] == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) >= part_vocab
    assert tokenizer.pad_token == "<pad>" and config["pad_token_id"] == tokenizer.pad_token_id


def test_linear_connector_starts_as_one_affine_map(parts, cache):
    folder = composed_checkpoint(_compose(parts, connector="linear", seed=0))
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["projector_hidden_act"] == "linear"
    projector = _load(folder).model.multi_modal_projector
    assert torch.equal(projector.linear_2.weight, torch.eye(64)) and not projector.linear_2.bias.any()
    # So the projector is x -> W1 x + b1 exactly.
    x = torch.randn(3, 64)
    expected = x @ projector.linear_1.weight.T + projector.linear_1.bias
    with torch.no_grad():
        assert torch.allclose(projector(x), expected, atol=1e-6)


def test_the_connector_is_seeded_and_the_cache_keyed_by_parts_connector_and_seed(parts, cache, monkeypatch):
    calls = []
    build = compose_module.build_composed
    monkeypatch.setattr(compose_module, "build_composed", lambda *a: calls.append(a) or build(*a))
    first = composed_checkpoint(_compose(parts, seed=5))
    again = composed_checkpoint(_compose(parts, seed=5))
    other_seed = composed_checkpoint(_compose(parts, seed=6))
    other_connector = composed_checkpoint(_compose(parts, seed=5, connector="linear"))
    assert first == again and len(calls) == 3  # the second call reused the cached folder
    assert len({first, other_seed, other_connector}) == 3
    # Rebuilt from scratch elsewhere with the same seed: the same connector (every party agrees).
    monkeypatch.setenv("FEDUMM_CACHE", str(cache.parent / "elsewhere"))
    rebuilt = composed_checkpoint(_compose(parts, seed=5))
    assert rebuilt != first
    a, b, c = _connector(first), _connector(rebuilt), _connector(other_seed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["linear_1.weight"], c["linear_1.weight"])


def test_a_changed_part_gets_a_new_cache_folder(parts, cache, tmp_path):
    language = tmp_path / "llama"
    language.mkdir()
    build_tiny_llama(language, seed=2)
    before = composed_checkpoint(ComposeConfig(vision=str(parts["vision"]), language=str(language), seed=0))
    (language / "model.safetensors").unlink()
    build_tiny_llama(language, seed=3)  # same names, new weights
    after = composed_checkpoint(ComposeConfig(vision=str(parts["vision"]), language=str(language), seed=0))
    assert before != after


def test_the_composed_model_loads_by_path_as_llava_and_trains(parts, cache):
    folder = composed_checkpoint(_compose(parts, seed=0))
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=folder, device="cpu"))
    model = backend.load()
    assert type(model).__name__ == "LlavaForConditionalGeneration" and backend.model_type == "llava"
    assert type(backend.processor.image_processor).__name__ == "CLIPImageProcessorPil"
    # The LM's Llama-3-style template, image items turned into "<image>\n" before it.
    assert backend.prompt("what color ?") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nwhat color ?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    batch = backend.training_batch(make_synthetic_vqa(2, seed=1))
    # CLIP at 32x32 in patches of 8: 16 patch features (its CLS token dropped).
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [16, 16]
    assert torch.isfinite(backend.loss(model, batch))


def test_a_siglip_tower_keeps_every_patch(tmp_path, parts, cache):
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    from fedumm.models.tiny.common import save_model

    siglip = tmp_path / "siglip"
    siglip.mkdir()
    processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    save_model(siglip, SiglipVisionModel, SiglipVisionConfig(**vision_dims(32, 8)), processor, seed=0)
    folder = composed_checkpoint(ComposeConfig(vision=str(siglip), language=str(parts["language"]), seed=0))
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_feature_select_strategy"] == "full"  # SigLIP has no CLS token
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=folder, device="cpu"))
    model = backend.load()
    batch = backend.training_batch(make_synthetic_vqa(1, seed=1))
    assert (batch["input_ids"] == model.config.image_token_id).sum().item() == 16
    assert torch.isfinite(backend.loss(model, batch))


def test_a_vision_part_that_is_not_clip_or_siglip_is_refused(parts, cache):
    bad = ComposeConfig(vision=str(parts["language"]), language=str(parts["language"]))
    with pytest.raises(ConfigError, match=r"model.compose.vision: '.*llama' is a 'llama' checkpoint; expected a CLIP"):
        composed_checkpoint(bad)
    assert not (cache / "composed").exists() or not any((cache / "composed").iterdir())


@pytest.mark.parametrize("key", ["vision", "language"])
def test_a_missing_part_names_its_key(parts, cache, tmp_path, key):
    fields = {"vision": str(parts["vision"]), "language": str(parts["language"]), key: str(tmp_path / "nope")}
    with pytest.raises(ConfigError, match=rf"^model.compose.{key}: no such folder '.*nope'$"):
        composed_checkpoint(ComposeConfig(**fields))


def test_a_language_part_that_is_not_a_causal_lm_is_refused(parts, cache):
    bad = ComposeConfig(vision=str(parts["vision"]), language=str(parts["vision"]))
    with pytest.raises(ConfigError, match=r"model.compose.language: cannot load '.*clip'"):
        composed_checkpoint(bad)


# -- configuration -------------------------------------------------------------------------


def test_compose_takes_the_run_seed_unless_given():
    config = load_run_config(None, ["seed=7", "model.compose={vision: tiny-clip-vision, language: tiny-llama}"])
    assert config.model.compose.seed == 7 and config.model.compose.connector == "mlp2x_gelu"
    config = load_run_config(None, ["seed=7", "model.compose={vision: a, language: b, seed: 3}"])
    assert config.model.compose.seed == 3


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["model.name_or_path=tiny-llava", "model.compose={vision: tiny-clip-vision, language: tiny-llama}"],
            "model.compose and model.name_or_path are exclusive",
        ),
        (
            ["model.backend=blip_vqa", "model.compose={vision: tiny-clip-vision, language: tiny-llama}"],
            "model.compose: builds a LLaVA model for backend hf_vlm, not 'blip_vqa'",
        ),
        (["model.compose={vision: a, language: b, connector: mlp3x}"], "model.compose.connector: must be one of"),
        (["model.compose={vision: a}"], "model.compose.language: Field required"),
    ],
)
def test_bad_compose_configs(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)
