"""Generic backend over ``AutoModelForImageTextToText``: LLaVA, LLaVA-NeXT, Qwen2-VL,
Qwen2.5-VL, Idefics3, SmolVLM, PaliGemma (and Janus) checkpoints by hub id or local folder.

What differs between those families is data, not code: ``FAMILIES`` (keyed by
``config.model_type``) gives each family's language-side LoRA anchor, its vision / connector /
language parameter groups, its prompt style, the token that ends an answer, and how per-token
inputs (PaliGemma's ``token_type_ids``, Qwen2-VL's ``mm_token_type_ids``) extend over the
answer. An unknown model type is handled like LLaVA, with a warning naming the known types.

Prompts go through the processor's chat template where the family has one (PaliGemma: the
``<image>answer en {question}`` prefix, the answer as suffix), with one image placeholder per
image of the row for the families that take several images per prompt; the answer is
tokenised separately and appended to the processed prompt (image tokens already expanded), so
the loss covers exactly the answer tokens and the end-of-answer token; evaluation decodes
greedily. The end-of-answer token is read from the chat template (what it writes after an
assistant answer), else from the family table, else EOS. A template that starts with the BOS
token is tokenised without adding special tokens again (as transformers'
``apply_chat_template(tokenize=True)`` does), so a prompt never holds two BOS.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedumm.config import ModelConfig
from fedumm.errors import ConfigError
from fedumm.models.base import Backend
from fedumm.models.loading import first_line, load_error, load_frozen_model
from fedumm.models.registry import register_backend
from fedumm.models.tiny import resolve_model_path
from fedumm.types import IGNORE_INDEX


def _qwen_fallback(path: str):
    from fedumm.models.processors import QwenVLImageTextProcessor

    return QwenVLImageTextProcessor.from_pretrained(path)


def _minicpmv46_fallback(path: str):
    from fedumm.models.minicpm_v import load_processor

    return load_processor(path, "minicpmv4_6")


def _minicpmv47_fallback(path: str):
    from fedumm.models.minicpm_v import load_processor

    return load_processor(path, "minicpmv4_7")


def last_attention_layer(text_config: Any) -> int:
    """Index of the decoder's last self-attention layer: the last layer, or with ``layer_types``
    (Qwen3.5 alternates linear and full attention) the last ``full_attention`` one."""
    types = getattr(text_config, "layer_types", None) or []
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    return full[-1] if full else text_config.num_hidden_layers - 1


def _minicpmv_presets(hf_config: Any) -> dict[str, str]:
    r"""FedMLLM's MiniCPM-V LoRA target, ``llm\..*layers\.27\.self_attn\.q_proj`` (the last of
    Qwen2-7B's 28 layers, remote-code names): the last attention layer's q_proj, in the native
    module names."""
    layer = last_attention_layer(hf_config.text_config)
    return {"fedmllm": rf"model\.language_model\.layers\.{layer}\.self_attn\.q_proj"}


def _idefics3_fallback(path: str):
    """SmolVLM's stock processor needs a video processor (torchvision); for images alone the
    Idefics3 processor does the same work (global image, <fake_token_around_image> wrapping)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, Idefics3Processor

    from fedumm.models.processors import read_chat_template

    config = AutoConfig.from_pretrained(path)
    vision = config.vision_config
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Idefics3Processor(
        image_processor=AutoImageProcessor.from_pretrained(path),
        tokenizer=tokenizer,
        image_seq_len=(vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2,
        chat_template=read_chat_template(path) or getattr(tokenizer, "chat_template", None),
    )


@dataclass(frozen=True)
class Family:
    """Per-family details of the generic backend."""

    #: Module-name fragment of the language model: LoRA presets are anchored on it.
    language: str
    #: Parameter groups (re.fullmatch over the base model's parameter names).
    vision: str
    connector: str
    language_params: str
    extra_groups: dict[str, str] = field(default_factory=dict)
    #: "chat": the processor's chat template; "prefix": PaliGemma's "<image>answer en {q}".
    prompt: str = "chat"
    prefix_template: str = "answer en {question}"
    #: Text between the prompt and the answer words (" " after "ASSISTANT:", "" after "\n").
    answer_prefix: str = " "
    #: End-of-turn tokens; the first one the tokenizer knows ends the answer (else EOS).
    end_tokens: tuple[str, ...] = ()
    #: Per-token inputs besides input_ids/attention_mask, and their value on answer tokens.
    answer_token_types: dict[str, int] = field(default_factory=dict)
    #: Builds a processor from the checkpoint folder when AutoProcessor cannot.
    fallback_processor: Callable[[str], Any] | None = None
    #: Module names kept unquantized under model.quantization.
    quant_skip: tuple[str, ...] = ()
    #: Several images per prompt (one placeholder each in the chat content); False: one only.
    multi_image: bool = True
    #: Presets that depend on the checkpoint (e.g. its layer count): hf config -> name -> regex.
    config_presets: Callable[[Any], dict[str, str]] | None = None

    def lora_presets(self, hf_config: Any = None) -> dict[str, str]:
        """The three standard presets, plus the family's ``config_presets`` of ``hf_config``."""
        lang = self.language
        presets = {
            "attention": rf".*{lang}.*\.(q_proj|k_proj|v_proj)",
            "attention_qkvo": rf".*{lang}.*\.(q_proj|k_proj|v_proj|o_proj)",
            "all_linear": rf".*{lang}.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        }
        if self.config_presets is not None and hf_config is not None:
            presets.update(self.config_presets(hf_config))
        return presets

    def module_groups(self) -> dict[str, str]:
        groups = {"vision": self.vision, "connector": self.connector, "language": self.language_params}
        groups.update(self.extra_groups)
        return groups


_LLAVA_LANGUAGE = r"(.*\.)?(language_model|lm_head)\..*"
_NOTHING = r"(?!)"  # a group the family does not have

LLAVA = Family(
    language="language_model",
    vision=r"(.*\.)?vision_tower\..*",
    connector=r"(.*\.)?multi_modal_projector\..*",
    language_params=_LLAVA_LANGUAGE,
    quant_skip=("vision_tower", "multi_modal_projector"),
)

_QWEN = Family(
    language="language_model",
    vision=r"(.*\.)?visual\.(?!merger\.).*",
    connector=r"(.*\.)?visual\.merger\..*",  # the 2x2 patch merger MLP
    language_params=_LLAVA_LANGUAGE,
    answer_prefix="",  # the template ends with "assistant\n"
    end_tokens=("<|im_end|>",),
    answer_token_types={"mm_token_type_ids": 0},
    fallback_processor=_qwen_fallback,
    quant_skip=("visual",),
)

_IDEFICS3 = Family(
    language="text_model",
    vision=r"(.*\.)?vision_model\..*",
    connector=r"(.*\.)?connector\..*",  # pixel shuffle + modality projection
    language_params=r"(.*\.)?(text_model|lm_head)\..*",
    end_tokens=("<end_of_utterance>",),
    quant_skip=("vision_model", "connector"),
)

# MiniCPM-V 4.6 / 4.7: NaViT tower (its window-attention vit_merger included), the MLP merger
# as connector, a Qwen3.5 decoder whose linear-attention layers have no q/k/v_proj (the
# attention presets wrap the full-attention layers), ChatML.
_MINICPMV = Family(
    language="language_model",
    vision=r"model\.vision_tower\..*",
    connector=r"model\.merger\..*",
    language_params=r"(model\.language_model|lm_head)\..*",
    answer_prefix="",  # the template ends with "assistant\n"
    end_tokens=("<|im_end|>",),
    answer_token_types={"mm_token_type_ids": 0},
    fallback_processor=_minicpmv46_fallback,
    quant_skip=("vision_tower", "merger"),
    config_presets=_minicpmv_presets,
)

FAMILIES: dict[str, Family] = {
    "llava": LLAVA,
    # image_newline: the learned separator appended to each row of anyres features.
    "llava_next": Family(
        language="language_model",
        vision=r"(.*\.)?vision_tower\..*",
        connector=r"(.*\.)?(multi_modal_projector\..*|image_newline)",
        language_params=_LLAVA_LANGUAGE,
        quant_skip=("vision_tower", "multi_modal_projector"),
    ),
    "qwen2_vl": _QWEN,
    "qwen2_5_vl": _QWEN,
    "idefics3": _IDEFICS3,
    "smolvlm": dataclasses.replace(_IDEFICS3, fallback_processor=_idefics3_fallback),
    "paligemma": Family(
        language="language_model",
        vision=r"(.*\.)?vision_tower\..*",
        connector=r"(.*\.)?multi_modal_projector\..*",
        language_params=_LLAVA_LANGUAGE,
        prompt="prefix",
        answer_prefix="",  # the processor ends the prefix with "\n"
        # token_type_ids: 0 = prefix (bidirectional attention), 1 = suffix (causal, supervised).
        answer_token_types={"token_type_ids": 1},
        quant_skip=("vision_tower", "multi_modal_projector"),
        multi_image=False,  # the prefix-LM format of PaliGemma checkpoints has one image
    ),
    "janus": Family(
        language="language_model",
        vision=r"model\.vision_model\..*",
        connector=r"model\.aligner\..*",
        language_params=r"(model\.language_model|lm_head)\..*",
        # The image-generation path, unused for VQA: the image-token embeddings, the aligner
        # from them to the decoder, the image-token head, and the VQ tokenizer (frozen: it
        # defines the tokens).
        extra_groups={
            "gen_embed": r"model\.generation_embeddings\..*",
            "gen_aligner": r"model\.generation_aligner\..*",
            "gen_head": r"model\.generation_head\..*",
            "vq": r"model\.vqmodel\..*",
        },
        quant_skip=("vision_model", "aligner", "vqmodel", "generation_"),
    ),
    "minicpmv4_6": _MINICPMV,
    "minicpmv4_7": dataclasses.replace(_MINICPMV, fallback_processor=_minicpmv47_fallback),
    # Early fusion, encoder-free: images are VQ codes in the decoder's own vocabulary, so
    # there is no vision tower or connector; the VQ tokenizer is its own (frozen) group.
    "emu3": Family(
        language="text_model",
        vision=_NOTHING,
        connector=_NOTHING,
        language_params=r"(model\.text_model|lm_head)\..*",
        extra_groups={"vq": r"model\.vqmodel\..*"},
        quant_skip=("vqmodel",),
        multi_image=False,
    ),
}


def family_for(model_type: str) -> Family:
    """The family table entry of ``model_type``; an unknown type gets the LLaVA layout, with a
    warning naming the known types (module groups and LoRA presets may then match nothing)."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    warnings.warn(
        f"model.name_or_path: model_type {model_type!r} is not in the hf_vlm family table "
        f"(known: {', '.join(sorted(FAMILIES))}); assuming the LLaVA layout (language_model, "
        "vision_tower, multi_modal_projector): LoRA presets and module groups may not fit; "
        "model.family picks another entry",
        UserWarning,
        stacklevel=2,
    )
    return LLAVA


@register_backend("hf_vlm")
class HFVisionLanguageBackend(Backend):
    default_model = "tiny-llava"
    # lora_presets and module_groups depend on the checkpoint's family: properties that read
    # config.json on first use (load() sets the family too).

    @property
    def lora_presets(self) -> dict[str, str]:
        return self.resolve_family().lora_presets(self.hf_config)

    @property
    def module_groups(self) -> dict[str, str]:
        return self.resolve_family().module_groups()

    @classmethod
    def group_names(cls) -> tuple[str, ...]:
        """Every family's groups (which one applies is known once the checkpoint is read)."""
        return tuple(dict.fromkeys(g for family in FAMILIES.values() for g in family.module_groups()))

    #: transformers class used to load the model (name, resolved lazily).
    model_class_name = "AutoModelForImageTextToText"
    #: model types this backend accepts; None = any.
    model_types: tuple[str, ...] | None = None

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.family: Family | None = None
        self.model_type: str | None = None
        self.hf_config: Any = None  # the checkpoint's transformers config, read with the family
        self._path: str | None = None
        compose = config.compose
        if compose is not None:  # how logs name the model
            self.name_or_path = f"compose({compose.vision} + {compose.language}, {compose.connector})"
        self._end_token: tuple[Any, int] | None = None  # (chat template, its end id)

    @property
    def family_name(self) -> str:
        return self.model_type or self.name

    @property
    def images_per_prompt(self) -> int | None:
        return None if (self.family or LLAVA).multi_image else 1

    # -- family resolution -------------------------------------------------------------------

    def _set_family(self, model_type: str) -> None:
        if self.model_types is not None and model_type not in self.model_types:
            raise ConfigError(
                f"model.name_or_path: backend {self.name} loads {', '.join(self.model_types)} "
                f"checkpoints, got model_type {model_type!r}"
            )
        self.model_type = model_type
        chosen = self.config.family
        if chosen is not None and chosen not in FAMILIES:
            raise ConfigError(f"model.family: unknown family {chosen!r}; known: {', '.join(sorted(FAMILIES))}")
        self.family = FAMILIES[chosen] if chosen is not None else family_for(model_type)

    def _read_model_type(self, path: str) -> str:
        """The checkpoint's model type (its config kept in ``hf_config``). A model type that
        transformers does not implement needs ``model.trust_remote_code`` (the checkpoint's own
        code); without it, one line says so."""
        from transformers import AutoConfig

        remote = self.config.trust_remote_code
        try:
            self.hf_config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
        except (OSError, ValueError, KeyError) as exc:
            if not remote and "trust_remote_code" in str(exc):
                raise ConfigError(
                    f"model.trust_remote_code: {path!r} is a model type transformers does not implement and "
                    "ships its own Python code; set model.trust_remote_code=true to run it (MiniCPM-V: use "
                    "a 4.6 or 4.7 checkpoint, which transformers implements natively)"
                ) from exc
            raise load_error(path, exc) from exc
        return self.hf_config.model_type

    def checkpoint_path(self) -> str:
        """The folder (or hub id) to load: model.compose's cached composed checkpoint (built once),
        else model.name_or_path or the backend's tiny model."""
        if self._path is None:
            compose = self.config.compose
            if compose is not None:
                from fedumm.models.compose import composed_checkpoint

                self._path = composed_checkpoint(compose)
            else:
                self._path = resolve_model_path(self.name_or_path)
            if self.config.trust_remote_code:
                warnings.warn(
                    f"model.trust_remote_code: loading {self._path!r} may run Python code shipped with the "
                    "checkpoint (with this process's rights); use it only for checkpoints you trust",
                    UserWarning,
                    stacklevel=2,
                )
        return self._path

    def resolve_family(self) -> Family:
        if self.family is None:
            self._set_family(self._read_model_type(self.checkpoint_path()))
        return self.family

    # -- loading ---------------------------------------------------------------------------

    def _model_class(self):
        import transformers

        return getattr(transformers, self.model_class_name)

    def _load_processor(self, path: str):
        """AutoProcessor, else the family's fallback built from the folder's files (AutoProcessor
        fails, or silently returns a bare tokenizer, e.g. when the stock processor needs
        torchvision); a failing fallback is chained to the error."""
        from transformers import AutoProcessor

        fallback = self.family.fallback_processor
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=self.config.trust_remote_code)
        except (OSError, ValueError, ImportError, TypeError, AttributeError) as exc:
            if fallback is None:
                raise load_error(path, exc) from exc
            processor, got = None, f"AutoProcessor failed: {first_line(exc)}"
        else:
            got = f"AutoProcessor returned {type(processor).__name__}"
        if not _is_multimodal_processor(processor) and fallback is not None:
            try:
                processor = fallback(path)
            except (OSError, ValueError, ImportError, TypeError, KeyError) as exc:
                raise ConfigError(
                    f"model.name_or_path: {path!r} has no multimodal processor ({got}), and the "
                    f"{self.family_name} processor built from the folder's files failed: {first_line(exc)}"
                ) from exc
        if not _is_multimodal_processor(processor):
            raise ConfigError(f"model.name_or_path: {path!r} has no multimodal processor ({got})")
        return processor

    def load(self) -> torch.nn.Module:
        path = self.checkpoint_path()
        self._set_family(self._read_model_type(path))
        processor = self._load_processor(path)
        remote = {"trust_remote_code": True} if self.config.trust_remote_code else {}
        model = load_frozen_model(
            self._model_class(), path, self.config, self.device, skip_modules=self.family.quant_skip, **remote
        )
        self.model, self.processor = model, processor
        return model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # -- prompts and batches ---------------------------------------------------------------

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", None) or self.tokenizer.image_token

    def prompt(self, question: str, num_images: int = 1) -> str:
        family = self.family or LLAVA
        if family.prompt == "prefix":
            return self.image_token * num_images + family.prefix_template.format(question=question)
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
        return f"{' '.join([self.image_token] * num_images)} {question}"

    def template_end_id(self) -> int | None:
        """The end-of-turn token the chat template writes after an assistant answer: the first
        special token following a dummy answer in a rendered two-turn conversation. None without
        a chat template, or when the template writes no special token there (Janus: "\\n\\n")."""
        template = getattr(self.processor, "chat_template", None)
        if not template or (self.family or LLAVA).prompt != "chat":
            return None
        if self._end_token is not None and self._end_token[0] is template:
            return self._end_token[1]
        from jinja2 import TemplateError

        answer = "fedumm dummy answer 12345"
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "question"}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        try:
            rendered = self.processor.apply_chat_template(messages)
        except TemplateError:  # a template that renders no assistant turn: use the table
            rendered = ""
        end = None
        if answer in rendered:
            # Named special tokens and every added token marked special (<|eot_id|>, <|im_end|>, ...).
            special = set(self.tokenizer.all_special_ids) | {
                i for i, token in self.tokenizer.added_tokens_decoder.items() if token.special
            }
            after = self.tokenizer(rendered.split(answer, 1)[1], add_special_tokens=False)["input_ids"]
            end = next((i for i in after if i in special), None)
        self._end_token = (template, end)
        return end

    def answer_end_id(self) -> int:
        """The token that ends a supervised answer (and stops generation): the chat template's
        end of an assistant turn, else the family table's first known end token, else EOS."""
        from_template = self.template_end_id()
        if from_template is not None:
            return from_template
        family = self.family or LLAVA
        vocab = self.tokenizer.get_vocab()
        for token in family.end_tokens:
            if token in vocab:
                return vocab[token]
        return self.tokenizer.eos_token_id

    def stop_token_ids(self) -> list[int]:
        ids = [self.answer_end_id(), self.tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def _encode_prompts(self, samples: Sequence[dict], padding_side: str):
        self.tokenizer.padding_side = padding_side
        images = self.images_by_row(samples)
        texts = [self.prompt(s["question"], len(imgs)) for s, imgs in zip(samples, images)]
        kwargs: dict[str, Any] = {}
        bos = self.tokenizer.bos_token
        if (self.family or LLAVA).prompt == "chat" and bos and all(t.startswith(bos) for t in texts):
            kwargs["add_special_tokens"] = False  # the template wrote BOS already
        with warnings.catch_warnings():
            # PaliGemma's processor builds its (unused) labels with np.array over tensors.
            warnings.filterwarnings("ignore", message=r".*__array__ implementation", category=DeprecationWarning)
            encoded = self.processor(
                images=images if self.images_per_prompt is None else [i for row in images for i in row],
                text=texts,
                return_tensors="pt",
                padding=True,
                padding_side=padding_side,
                **kwargs,
            )
        encoded = dict(encoded)
        encoded.pop("labels", None)  # PaliGemma's processor adds all -100 labels for a prefix
        return encoded

    def answer_ids(self, answer: str) -> list[int]:
        family = self.family or LLAVA
        ids = self.tokenizer(family.answer_prefix + answer, add_special_tokens=False)["input_ids"]
        return ids + [self.answer_end_id()]

    def training_batch(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Prompt tokens (from the processor, image tokens expanded) + answer tokens + end token.

        The answer is tokenised separately and appended, so the label boundary is exact for
        any tokenizer (no prefix-tokenisation assumptions). Per-token inputs of the prompt
        (token type ids) are carried over and extended over the answer with the family's value.
        """
        family = self.family or LLAVA
        encoded = self._encode_prompts(samples, padding_side="right")
        ids, mask = encoded.pop("input_ids"), encoded.pop("attention_mask").bool()
        per_token = {
            k: encoded.pop(k)
            for k in list(encoded)
            if torch.is_tensor(encoded[k]) and not encoded[k].is_floating_point() and encoded[k].shape == ids.shape
        }
        rows, labels, extras = [], [], {k: [] for k in per_token}
        for i, sample in enumerate(samples):
            prompt_ids = ids[i][mask[i]].tolist()
            answer = self.answer_ids(sample["multiple_choice_answer"])
            rows.append(prompt_ids + answer)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + answer)
            for key, values in per_token.items():
                fill = family.answer_token_types.get(key, 0)
                extras[key].append(values[i][mask[i]].tolist() + [fill] * len(answer))
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        extra_tensors = {k: torch.zeros((len(rows), width), dtype=v.dtype) for k, v in per_token.items()}
        for i, (row, lab) in enumerate(zip(rows, labels)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(row)] = 1
            for key in extras:
                extra_tensors[key][i, : len(row)] = torch.tensor(extras[key][i])
        batch = dict(encoded)
        batch.update(extra_tensors)
        batch.update(input_ids=input_ids, attention_mask=attention, labels=label_ids)
        return batch

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, samples: Sequence[dict]) -> list[str]:
        encoded = self.to_device(self._encode_prompts(samples, padding_side="left"))
        output = model.generate(
            **encoded,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            use_cache=True,  # batched greedy decoding over the KV cache: one new token's forward per step
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_token_ids(),
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _is_multimodal_processor(processor: Any) -> bool:
    return (
        processor is not None
        and getattr(processor, "image_processor", None) is not None
        and getattr(processor, "tokenizer", None) is not None
    )
