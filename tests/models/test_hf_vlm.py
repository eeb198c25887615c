import json
from pathlib import Path

import pytest
import torch

from fedumm.config import ModelConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.models.hf_vlm import IGNORE_INDEX
from fedumm.models.registry import available_backends, get_backend, register_backend


def test_tiny_model_is_a_real_checkpoint_folder(tiny_llava_path):
    files = {p.name for p in Path(tiny_llava_path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert json.loads((Path(tiny_llava_path) / "config.json").read_text())["model_type"] == "llava"


def test_loads_frozen_through_from_pretrained(model_config):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    backend = get_backend("hf_vlm")(model_config)
    model = backend.load()
    assert isinstance(model, LlavaForConditionalGeneration)
    assert isinstance(backend.processor, LlavaProcessor)
    assert not any(p.requires_grad for p in model.parameters())


def test_labels_cover_only_answer_and_eos(model_config):
    backend = get_backend("hf_vlm")(model_config)
    backend.load()
    samples = make_synthetic_vqa(3, seed=1)
    batch = backend.training_batch(samples)
    tok = backend.tokenizer
    for i, sample in enumerate(samples):
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        expected = tok(" " + sample["multiple_choice_answer"], add_special_tokens=False)["input_ids"]
        assert supervised == expected + [tok.eos_token_id]
        # Labels line up with the input ids they supervise.
        positions = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten()
        assert batch["input_ids"][i, positions].tolist() == supervised
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    # Padding is masked out of attention and labels.
    assert torch.equal(batch["attention_mask"] == 0, batch["input_ids"] == tok.pad_token_id)


def test_predict_returns_one_string_per_sample(lora_model):
    model, backend = lora_model
    answers = backend.predict(model, make_synthetic_vqa(5, seed=2))
    assert len(answers) == 5 and all(isinstance(a, str) for a in answers)


def test_folder_without_processor_is_rejected(tmp_path, tiny_llava_path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder = tmp_path / "no-processor"
    AutoModelForImageTextToText.from_pretrained(tiny_llava_path).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llava_path).save_pretrained(folder)
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=str(folder), device="cpu"))
    with pytest.raises(
        ConfigError, match=r"model.name_or_path: (cannot load .*image processor|.*no multimodal processor)"
    ):
        backend.load()


@pytest.mark.parametrize("name", ["./does/not/exist", "/abs/missing/dir", "a/b/c"])
def test_missing_local_folder_is_a_config_error(name):
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=name, device="cpu"))
    with pytest.raises(ConfigError, match="model.name_or_path: no such folder"):
        backend.load()


def test_registry_rejects_duplicates_and_unknown_names():
    assert "hf_vlm" in available_backends()
    with pytest.raises(ValueError, match="already registered"):
        register_backend("hf_vlm")(type("Dup", (), {}))
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        get_backend("nope")


@pytest.mark.parametrize(
    ("adapter", "expected"),
    [
        ({}, r".*language_model.*\.(q_proj|k_proj|v_proj)"),
        ({"preset": "all_linear"}, r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"),
        ({"preset": "all_linear", "target_modules": ".*q_proj"}, ".*q_proj"),
    ],
)
def test_lora_target_resolution(model_config, adapter, expected):
    from fedumm.config import AdapterConfig

    backend = get_backend("hf_vlm")(model_config)
    assert backend.lora_target_regex(AdapterConfig(**adapter)) == expected


def test_unknown_lora_preset_lists_the_available_ones(model_config):
    from fedumm.config import AdapterConfig

    backend = get_backend("hf_vlm")(model_config)
    with pytest.raises(
        ConfigError, match="adapter.preset: unknown preset 'qq' for backend hf_vlm; available: all_linear"
    ):
        backend.lora_target_regex(AdapterConfig(preset="qq"))


def test_text_only_rows_get_a_blank_image_and_train(lora_model):
    from fedumm.config import TrainConfig
    from fedumm.federation.train import train_local

    model, backend = lora_model
    samples = make_synthetic_vqa(4, seed=6)
    samples[1] = dict(samples[1], image=None)  # e.g. a missing-modality row
    images = backend.images_of(samples)
    assert images[0] is samples[0]["image"]
    assert images[1].size == (32, 32) and images[1].getextrema() == ((0, 0), (0, 0), (0, 0))
    result = train_local(model, backend, samples, TrainConfig(batch_size=4), seed=0)
    assert torch.isfinite(torch.tensor(result.mean_loss))
    assert len(backend.predict(model, samples)) == 4


def test_unknown_model_type_warns_with_the_known_families():
    from fedumm.models.hf_vlm import FAMILIES, LLAVA, family_for

    with pytest.warns(
        UserWarning,
        match=r"model_type 'mystery_vlm' is not in the hf_vlm family table "
        r"\(known: emu3, idefics3, janus, llava, llava_next, minicpmv4_6, minicpmv4_7, paligemma, .*\); "
        r"assuming the LLaVA layout",
    ):
        assert family_for("mystery_vlm") is LLAVA
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(family_for(t) is FAMILIES[t] for t in FAMILIES)  # known types: silent


@pytest.mark.parametrize(("family", "expected"), [("qwen2_vl", "qwen2_vl"), ("idefics3", "idefics3")])
def test_model_family_picks_the_table_entry_for_an_unknown_type(family, expected):
    import warnings

    from fedumm.models.hf_vlm import FAMILIES, HFVisionLanguageBackend

    backend = HFVisionLanguageBackend(ModelConfig(device="cpu", family=family))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit family: no "unknown model_type" warning
        backend._set_family("mystery_vlm")
    assert backend.family is FAMILIES[expected] and backend.model_type == "mystery_vlm"


def test_unknown_model_family_names_the_key_and_the_known_ones():
    from fedumm.models.hf_vlm import HFVisionLanguageBackend

    backend = HFVisionLanguageBackend(ModelConfig(device="cpu", family="llama9"))
    with pytest.raises(
        ConfigError, match=r"^model.family: unknown family 'llama9'; known: emu3, idefics3, janus, llava"
    ):
        backend._set_family("llava")


def test_a_failing_fallback_processor_is_chained(tmp_path):
    """A Qwen2-VL folder with a tokenizer but no image processor: AutoProcessor returns the bare
    tokenizer, fedumm's Qwen processor cannot find preprocessor_config.json either."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from fedumm.models.tiny import resolve_model_path

    source = resolve_model_path("tiny-qwen2-vl")
    folder = tmp_path / "qwen-no-image-processor"
    AutoModelForImageTextToText.from_pretrained(source).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=str(folder), device="cpu"))
    with pytest.raises(
        ConfigError,
        match=r"has no multimodal processor \(AutoProcessor (returned|failed).*\), and the "
        r"qwen2_vl processor built from the folder's files failed",
    ) as info:
        backend.load()
    assert isinstance(info.value.__cause__, OSError)


# -- model.trust_remote_code -----------------------------------------------------------------


def test_a_remote_code_checkpoint_needs_trust_remote_code(tmp_path):
    # MiniCPM-V 2.6's layout: a model type transformers does not implement, classes in the folder.
    folder = tmp_path / "minicpm-v-2_6"
    folder.mkdir()
    auto_map = {"AutoConfig": "configuration_minicpm.MiniCPMVConfig", "AutoModel": "modeling_minicpmv.MiniCPMV"}
    (folder / "config.json").write_text(json.dumps({"model_type": "minicpmv", "auto_map": auto_map}))
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=str(folder), device="cpu"))
    with pytest.raises(ConfigError) as err:
        backend.load()
    message = str(err.value)
    assert message.startswith(f"model.trust_remote_code: '{folder}' is a model type transformers does not implement")
    assert "set model.trust_remote_code=true" in message and "\n" not in message
    assert ModelConfig().trust_remote_code is False  # off unless asked for


def test_trust_remote_code_warns_that_it_runs_the_checkpoints_code(tiny_llava_path):
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=tiny_llava_path, device="cpu", trust_remote_code=True))
    with pytest.warns(UserWarning, match=r"model.trust_remote_code: loading '.*' may run Python code shipped with"):
        model = backend.load()
    assert type(model).__name__ == "LlavaForConditionalGeneration"  # a native checkpoint loads as before
