"""Every backend and family on its built-in tiny model: built offline, saved, loaded by path
through the backend's from_pretrained code, LoRA'd, trained one step, asked for answers, and
run through one federated round."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fedumm.adapters import apply_lora, get_adapter_state
from fedumm.config import AdapterConfig, ComposeConfig, ModelConfig, TrainConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.federation.train import train_local
from fedumm.models.compose import composed_checkpoint
from fedumm.models.hf_vlm import IGNORE_INDEX
from fedumm.models.registry import get_backend
from fedumm.models.tiny import TINY_MODELS, TINY_PARTS, resolve_model_path
from fedumm.validation import load_run_config

# tiny model -> (backend, model_type, model class, processor class)
CASES = {
    "tiny-llava": ("hf_vlm", "llava", "LlavaForConditionalGeneration", "LlavaProcessor"),
    "tiny-llava-next": ("hf_vlm", "llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    "tiny-qwen2-vl": ("hf_vlm", "qwen2_vl", "Qwen2VLForConditionalGeneration", "QwenVLImageTextProcessor"),
    "tiny-qwen2.5-vl": ("hf_vlm", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "QwenVLImageTextProcessor"),
    "tiny-idefics3": ("hf_vlm", "idefics3", "Idefics3ForConditionalGeneration", "Idefics3Processor"),
    "tiny-smolvlm": ("hf_vlm", "smolvlm", "SmolVLMForConditionalGeneration", "Idefics3Processor"),
    "tiny-paligemma": ("hf_vlm", "paligemma", "PaliGemmaForConditionalGeneration", "PaliGemmaProcessor"),
    "tiny-janus": ("janus", "janus", "JanusForConditionalGeneration", "JanusProcessor"),
    "tiny-minicpm-v": ("hf_vlm", "minicpmv4_6", "MiniCPMV4_6ForConditionalGeneration", "MiniCPMV46ImageProcessor"),
    "tiny-minicpm-v4.7": ("hf_vlm", "minicpmv4_7", "MiniCPMV4_7ForConditionalGeneration", "MiniCPMV47ImageProcessor"),
    "tiny-blip-vqa": ("blip_vqa", "blip", "BlipForQuestionAnswering", "BlipProcessor"),
    # model.compose of the tiny parts: saved as, and loaded by path like, any LLaVA checkpoint.
    "compose:tiny-clip-vision+tiny-llama": ("hf_vlm", "llava", "LlavaForConditionalGeneration", "LlavaProcessor"),
    "tiny-emu3": ("emu3", "emu3", "Emu3ForConditionalGeneration", "Emu3Processor"),
}
#: Early-fusion families: images are tokens of the decoder's vocabulary, no vision tower or connector.
ENCODER_FREE = {"tiny-emu3"}
NAMES = list(CASES)
COMPOSED = {
    "compose:tiny-clip-vision+tiny-llama": ComposeConfig(vision="tiny-clip-vision", language="tiny-llama", seed=0)
}

# Where LoRA may land (the language side) and what the default preset must never touch.
LANGUAGE_SIDE = {
    "hf_vlm": r"(model\.)?(language_model|text_model)\..*",
    "janus": r"model\.language_model\..*",
    "emu3": r"model\.text_model\..*",
    "blip_vqa": r"text_(encoder|decoder)\..*",
}


def test_every_tiny_model_and_part_is_covered():
    assert set(CASES) - set(COMPOSED) == set(TINY_MODELS)
    assert {part for c in COMPOSED.values() for part in (c.vision, c.language)} == set(TINY_PARTS)


def checkpoint_path(name: str) -> str:
    return composed_checkpoint(COMPOSED[name]) if name in COMPOSED else resolve_model_path(name)


@pytest.fixture(scope="module")
def paths() -> dict[str, str]:
    return {name: checkpoint_path(name) for name in NAMES}


def make_backend(name: str, path: str, **model_overrides):
    backend_name = CASES[name][0]
    config = ModelConfig(backend=backend_name, name_or_path=path, device="cpu", **model_overrides)
    return get_backend(backend_name)(config)


class Loaded:
    """One backend with its frozen base, the base parameter names, and a LoRA-wrapped model."""

    def __init__(self, name: str, path: str):
        self.backend = make_backend(name, path)
        base = self.backend.load()
        self.base_class = type(base).__name__
        self.base_parameters = [n for n, _ in base.named_parameters()]
        self.frozen_before_lora = not any(p.requires_grad for p in base.parameters())
        torch.manual_seed(0)
        self.model = apply_lora(base, AdapterConfig(dropout=0.0), self.backend.lora_target_regex(AdapterConfig()))


@pytest.fixture(scope="module")
def loaded(paths):
    cache: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in cache:
            cache[name] = Loaded(name, paths[name])
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_folder_and_load_by_path(name, paths, loaded):
    _, model_type, model_class, processor_class = CASES[name]
    folder = Path(paths[name])
    assert json.loads((folder / "config.json").read_text())["model_type"] == model_type
    assert {"model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    item = loaded(name)
    assert item.base_class == model_class
    assert type(item.backend.processor).__name__ == processor_class
    assert item.frozen_before_lora


@pytest.mark.parametrize("name", NAMES)
def test_module_groups_partition_the_parameters(name, loaded):
    item = loaded(name)
    groups = {g: re.compile(p) for g, p in item.backend.module_groups.items()}
    assert {"vision", "connector", "language"} <= set(groups)
    for param in item.base_parameters:
        hits = [g for g, regex in groups.items() if regex.fullmatch(param)]
        assert len(hits) == 1, f"{param} is in groups {hits}"
    sizes = {g: sum(bool(r.fullmatch(p)) for p in item.base_parameters) for g, r in groups.items()}
    assert (sizes["vision"] > 0) == (name not in ENCODER_FREE) and sizes["language"] > 0
    # BLIP has no projector between image and text (cross-attention inside the text encoder).
    assert (sizes["connector"] == 0) == (name == "tiny-blip-vqa" or name in ENCODER_FREE)


@pytest.mark.parametrize("name", NAMES)
def test_default_lora_targets_only_the_language_side(name, loaded):
    item = loaded(name)
    anchor = re.compile(LANGUAGE_SIDE[CASES[name][0]])
    lora = [n for n, p in item.model.named_parameters() if p.requires_grad]
    assert lora and all(".lora_" in n for n in lora)
    for param in lora:
        assert anchor.fullmatch(param.removeprefix("base_model.model.")), param


@pytest.mark.parametrize("name", NAMES)
def test_labels_supervise_exactly_the_answer(name, loaded):
    backend = loaded(name).backend
    samples = make_synthetic_vqa(3, seed=1)
    batch = backend.training_batch(samples)
    for i, sample in enumerate(samples):
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        assert supervised == backend.answer_ids(sample["multiple_choice_answer"])
        words = backend.tokenizer.decode(supervised[:-1], skip_special_tokens=True)
        assert words.strip() == sample["multiple_choice_answer"].lower()
        if name != "tiny-blip-vqa":  # decoder-only: labels sit on the tokens they supervise
            positions = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten()
            assert batch["input_ids"][i, positions].tolist() == supervised
            assert batch["attention_mask"][i, positions].all()


def test_paligemma_answer_is_the_suffix(loaded):
    batch = loaded("tiny-paligemma").backend.training_batch(make_synthetic_vqa(2, seed=1))
    # token_type_ids: 0 on the prefix (image + "answer en ..."), 1 on the supervised suffix.
    supervised = batch["labels"] != IGNORE_INDEX
    assert torch.equal(batch["token_type_ids"].bool(), supervised)


def test_qwen_image_tokens_match_the_merged_patches(loaded):
    backend = loaded("tiny-qwen2-vl").backend
    batch = backend.training_batch(make_synthetic_vqa(2, seed=1))
    grid = batch["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4], [1, 4, 4]]  # 32x32 image, 8x8 patches
    per_row = (batch["input_ids"] == backend.processor.image_token_id).sum(dim=1)
    assert per_row.tolist() == [4, 4]  # 16 patches merged 2x2
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == backend.processor.image_token_id)


@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_changes_only_lora(name, loaded):
    item = loaded(name)
    model, backend = item.model, item.backend
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter_before = get_adapter_state(model)
    result = train_local(model, backend, make_synthetic_vqa(4, seed=2), TrainConfig(lr=1e-2, batch_size=4), seed=0)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.mean_loss))
    for n, p in model.named_parameters():
        if ".lora_" not in n:
            assert torch.equal(p, before[n]), f"base weight {n} changed"
    after = get_adapter_state(model)
    assert set(after) == set(adapter_before)
    assert any(not torch.equal(after[k], adapter_before[k]) for k in after)


@pytest.mark.parametrize("name", NAMES)
def test_predict_returns_one_string_per_sample(name, loaded):
    item = loaded(name)
    answers = item.backend.predict(item.model, make_synthetic_vqa(3, seed=3))
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_one_federated_round(name, paths, tmp_path):
    from fedumm.engines.simulation import simulate

    config = load_run_config(
        None,
        [
            f"model.backend={CASES[name][0]}",
            f"model.name_or_path={paths[name]}",
            "model.device=cpu",
            "model.max_new_tokens=3",
            "federation.num_clients=2",
            "federation.rounds=1",
            "data.synthetic.train_samples=40",
            "data.synthetic.test_samples=8",
            "train.batch_size=8",
            "train.local_steps=1",
            "eval.clients=false",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
            "output.name=round",
        ],
    )
    result = simulate(config)
    records = result.federated.records
    assert [r["round"] for r in records] == [0, 1]
    assert records[-1]["clients"] == [0, 1]
    for metrics in records[-1]["client_metrics"].values():
        assert metrics["steps"] == 1 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert (Path(result.run_dir) / "adapter" / "adapter_model.safetensors").is_file()


# -- prompts: one BOS, the template's end token, several images --------------------------

DECODER_ONLY = [n for n in NAMES if n != "tiny-blip-vqa"]
#: BOS ids in a training row: tiny-idefics3's template starts with BOS and its tokenizer adds
#: one too (as Idefics3-8B-Llama3's); PaliGemma's processor writes BOS after the image tokens.
#: Emu3's processor writes BOS before each prompt.
BOS_PER_ROW = {"tiny-idefics3": 1, "tiny-paligemma": 1, "compose:tiny-clip-vision+tiny-llama": 1, "tiny-emu3": 1}


@pytest.mark.parametrize("name", DECODER_ONLY)
def test_a_prompt_holds_at_most_one_bos(name, loaded):
    backend = loaded(name).backend
    tok = backend.tokenizer
    if name == "tiny-idefics3":  # both sources of a BOS are present
        assert tok("red")["input_ids"][0] == tok.bos_token_id
        assert backend.prompt("what ?").startswith(tok.bos_token)
    batch = backend.training_batch(make_synthetic_vqa(2, seed=1))
    per_row = (batch["input_ids"] == tok.bos_token_id).sum(dim=1).tolist()
    assert per_row == [BOS_PER_ROW.get(name, 0)] * 2


#: The end-of-answer token each tiny template writes after an assistant turn (None: no
#: special token there (Janus: "\n\n"), or no chat template (PaliGemma)), and the token the
#: backend supervises and stops on.
END_TOKENS = {
    "tiny-llava": ("</s>", "</s>"),
    "tiny-llava-next": ("</s>", "</s>"),
    "tiny-qwen2-vl": ("<|im_end|>", "<|im_end|>"),
    "tiny-qwen2.5-vl": ("<|im_end|>", "<|im_end|>"),
    "tiny-idefics3": ("<end_of_utterance>", "<end_of_utterance>"),
    "tiny-smolvlm": ("<end_of_utterance>", "<end_of_utterance>"),
    "tiny-paligemma": (None, "</s>"),
    "tiny-janus": (None, "</s>"),
    "tiny-minicpm-v": ("<|im_end|>", "<|im_end|>"),
    "tiny-minicpm-v4.7": ("<|im_end|>", "<|im_end|>"),
    # tiny-llama's Llama-3-style template, kept by model.compose.
    "compose:tiny-clip-vision+tiny-llama": ("<|eot_id|>", "<|eot_id|>"),
    "tiny-emu3": ("</s>", "</s>"),
}


@pytest.mark.parametrize("name", DECODER_ONLY)
def test_end_token_comes_from_the_chat_template(name, loaded):
    backend = loaded(name).backend
    from_template, used = END_TOKENS[name]
    tok = backend.tokenizer
    got = backend.template_end_id()
    assert (None if got is None else tok.convert_ids_to_tokens(got)) == from_template
    assert tok.convert_ids_to_tokens(backend.answer_end_id()) == used


def test_a_template_end_token_outside_the_family_table_is_used(paths):
    backend = make_backend("tiny-qwen2-vl", paths["tiny-qwen2-vl"])
    backend.load()
    table_end = backend.answer_end_id()
    assert backend.tokenizer.convert_ids_to_tokens(table_end) == "<|im_end|>"
    # A checkpoint whose template closes assistant turns with <|endoftext|> instead.
    backend.processor.chat_template = backend.processor.chat_template.replace(
        "{% endfor %}<|im_end|>\n{% endfor %}",
        "{% endfor %}{% if message['role'] == 'assistant' %}<|endoftext|>{% else %}<|im_end|>{% endif %}\n{% endfor %}",
    )
    end = backend.answer_end_id()
    assert backend.tokenizer.convert_ids_to_tokens(end) == "<|endoftext|>"
    assert backend.answer_ids("red")[-1] == end and end in backend.stop_token_ids()


MULTI_IMAGE = [
    "tiny-llava",
    "tiny-llava-next",
    "tiny-qwen2-vl",
    "tiny-qwen2.5-vl",
    "tiny-idefics3",
    "tiny-smolvlm",
    "tiny-janus",
    "tiny-minicpm-v",
    "tiny-minicpm-v4.7",
    "compose:tiny-clip-vision+tiny-llama",
]


def _image_token_id(backend) -> int:
    return backend.tokenizer.convert_tokens_to_ids(backend.image_token)


@pytest.mark.parametrize("name", MULTI_IMAGE)
def test_a_row_with_two_images_gets_two_image_placeholders(name, loaded):
    item = loaded(name)
    backend = item.backend
    one, other = make_synthetic_vqa(2, seed=4)
    two = dict(one, images=[one["image"], other["image"]])
    batch = backend.training_batch([one, two])
    image_tokens = (batch["input_ids"] == _image_token_id(backend)).sum(dim=1).tolist()
    assert image_tokens[0] > 0 and image_tokens[1] == 2 * image_tokens[0]
    loss = backend.loss(item.model, backend.to_device(batch))
    assert torch.isfinite(loss)
    assert len(backend.predict(item.model, [two])) == 1


@pytest.mark.parametrize(("name", "family"), [("tiny-paligemma", "paligemma"), ("tiny-blip-vqa", "blip_vqa")])
def test_single_image_families_reject_a_row_with_two_images(name, family, loaded):
    backend = loaded(name).backend
    one, other = make_synthetic_vqa(2, seed=4)
    with pytest.raises(ConfigError, match=rf"the {family} family takes 1 image per prompt, but row 0 .* has 2 images"):
        backend.training_batch([dict(one, images=[one["image"], other["image"]])])


# -- scoring fixed answers -------------------------------------------------------------------


class _ForceTokens:
    """A logits processor that makes generation follow ``ids`` (what generate's raw logits are
    then read for), starting once the sequence is ``start`` tokens long."""

    def __init__(self, ids, start):
        self.ids, self.start = ids, start

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[input_ids.shape[1] - self.start]] = 0.0
        return forced


def _forced_log_likelihood(backend, model, sample, answer) -> float:
    """log p(answer tokens + end token) from step-by-step generation with a KV cache: each step's
    raw logits, the forced token's log-softmax, summed. Independent of score_choices' single
    teacher-forced pass, its label shift and its padding."""
    from transformers import LogitsProcessorList

    ids = backend.answer_ids(answer)
    if backend.name == "blip_vqa":
        encoded, start = backend.to_device(backend._encode_questions([sample])), 1  # after [DEC]
    else:
        encoded = backend.to_device(backend._encode_prompts([sample], padding_side="left"))
        start = encoded["input_ids"].shape[1]
    generate = model.generate
    if backend.name == "janus":
        # JanusForConditionalGeneration.generate drops logits_processor in text mode (it then
        # calls GenerationMixin.generate without it); call that directly.
        from transformers import GenerationMixin

        generate = GenerationMixin.generate.__get__(model.get_base_model())
    with torch.no_grad():
        out = generate(
            **encoded,
            max_new_tokens=len(ids),
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            logits_processor=LogitsProcessorList([_ForceTokens(ids, start)]),
        )
    steps = out.logits
    assert out.sequences[0, -len(ids) :].tolist() == ids
    return sum(float(torch.log_softmax(step[0].float(), dim=-1)[t]) for step, t in zip(steps, ids))


@pytest.mark.parametrize("name", NAMES)
def test_score_choices_is_the_answer_log_likelihood(name, loaded):
    item = loaded(name)
    item.model.eval()
    samples = make_synthetic_vqa(2, seed=5)
    choices = ["yes", "red circle"]
    scores = item.backend.score_choices(item.model, samples, choices)
    assert scores.shape == (2, 2) and scores.dtype == torch.float32
    expected = torch.tensor(
        [[_forced_log_likelihood(item.backend, item.model, s, c) for c in choices] for s in samples]
    )
    assert torch.allclose(scores, expected, atol=1e-3), (scores, expected)
    # P(first choice) as ModelHost reports it for ROC-AUC: a probability, the softmax of the two.
    p = scores.softmax(dim=-1)[:, 0]
    assert torch.allclose(p, 1 / (1 + torch.exp(expected[:, 1] - expected[:, 0])), atol=1e-3)


# -- learning: LoRA alone learns the synthetic colour task -------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-minicpm-v", "compose:tiny-clip-vision+tiny-llama"])
def test_lora_learns_the_colour_task(name, paths):
    from collections import Counter

    rows = [r for r in make_synthetic_vqa(600, seed=3) if r["answer_type"] == "color"]
    train, test = rows[:96], rows[96:144]
    backend = make_backend(name, paths[name])
    torch.manual_seed(0)
    model = apply_lora(backend.load(), AdapterConfig(dropout=0.0), backend.lora_target_regex(AdapterConfig()))

    def accuracy() -> float:
        model.eval()
        answers = backend.predict(model, test)
        return sum(a == r["multiple_choice_answer"] for a, r in zip(answers, test)) / len(test)

    before = accuracy()
    train_local(model, backend, train, TrainConfig(lr=1e-2, batch_size=16, local_epochs=8), seed=0)
    after = accuracy()
    # Six colours: chance is 1/6; always answering the most frequent test colour scores `majority`.
    majority = Counter(r["multiple_choice_answer"] for r in test).most_common(1)[0][1] / len(test)
    assert before < 0.1
    assert after >= majority + 0.25 and after >= 0.5, (after, majority)
