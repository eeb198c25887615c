"""``model.compose``: a LLaVA-architecture VLM assembled from a vision encoder and a causal LM.

FedVLMBench (Zheng et al., 2025, "FedVLMBench: Benchmarking Federated Fine-Tuning of
Vision-Language Models") builds its encoder-based VLM from CLIP ViT-B/32 and
Llama-3.2-3B-Instruct joined by a new connector, trained first alone (F-C) and then with LoRA
(F-CL). Here the parts become a ``LlavaForConditionalGeneration`` (Liu et al., 2024, "Improved
Baselines with Visual Instruction Tuning"): the vision tower and language model carry the
parts' configs and weights; the connector is ``LlavaMultiModalProjector`` initialised fresh
under ``compose.seed`` (the run seed unless given), either LLaVA-1.5's ``mlp2x_gelu``
(``linear_2(gelu(linear_1(x)))``) or ``linear``: the same two layers with the identity as
activation and ``linear_2`` starting as the identity matrix, i.e. one affine map
``W x + b`` (LLaVA's architecture has no one-layer projector).

The processor is a ``LlavaProcessor`` over the vision part's image processor (the *Pil class
when torchvision is absent) and the LM's tokenizer, with ``<image>`` added as a special token
(and ``<pad>`` where the tokenizer has no pad token), the embeddings resized to match. The
LM's chat template is kept, behind a preamble that turns list-of-items messages into the plain
strings text-only templates expect (an image item becomes ``<image>\\n``).

The result is saved once with ``save_pretrained`` into ``cache_root()/composed/<key>``, the key
hashing both parts (their config.json and weight files' names, sizes and modification times),
the connector and the seed; hf_vlm then loads it like any LLaVA checkpoint. So the composition
runs once per machine, and every party of a federation (same parts, same seed) builds the same
base model, which FL needs since only trained tensors travel. A saved composed folder is an
ordinary LLaVA checkpoint and loads by path without ``model.compose``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from fedumm.config import ComposeConfig
from fedumm.errors import ConfigError
from fedumm.models.loading import first_line
from fedumm.models.tiny import build_once, cache_root, resolve_model_path

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
#: Bump when what the composition writes changes, so stale composed folders are not reused.
_COMPOSE_VERSION = "1"

#: Vision checkpoints (full CLIP/SigLIP or their vision models) -> (transformers class, LLaVA
#: feature strategy, tokens besides the patches). CLIP's CLS token is dropped ("default").
_VISION = {
    "clip": ("CLIPVisionModel", "default", 1),
    "clip_vision_model": ("CLIPVisionModel", "default", 1),
    "siglip": ("SiglipVisionModel", "full", 0),
    "siglip_vision_model": ("SiglipVisionModel", "full", 0),
}

#: Turns {"type": "image"} / {"type": "text"} items into one string per message, then hands
#: ``messages`` to the language model's own template (which follows this text).
IMAGE_CONTENT_PREAMBLE = (
    "{%- set converted = namespace(items=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set converted.items = converted.items + [message] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set text.value = text.value + '" + IMAGE_TOKEN + "\\n' -%}"
    "{%- elif item['type'] == 'text' -%}{%- set text.value = text.value + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set converted.items = converted.items + [{'role': message['role'], 'content': text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = converted.items -%}"
)


def _fingerprint(path: str) -> dict:
    """What identifies a part: a local folder by its config.json and its weight files' names,
    sizes and modification times; a hub id by its name."""
    folder = Path(path)
    if not folder.is_dir():
        return {"id": path}
    config = folder / "config.json"
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {
        "config": config.read_text() if config.is_file() else None,
        "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights],
    }


def _resolve_part(key: str, name: str) -> str:
    """A part's folder (a tiny part is built once), or the name as a hub id."""
    try:
        return resolve_model_path(name)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("model.name_or_path:", f"model.compose.{key}:", 1)) from None


def composed_key(compose: ComposeConfig) -> str:
    """The cache folder name of ``compose``: readable part names, connector, then a hash of the
    parts' fingerprints, connector and seed."""
    vision, language = _resolve_part("vision", compose.vision), _resolve_part("language", compose.language)
    seed = compose.seed if compose.seed is not None else 0
    identity = {
        "version": _COMPOSE_VERSION,
        "vision": _fingerprint(vision),
        "language": _fingerprint(language),
        "connector": compose.connector,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def slug(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[:40]

    return f"{slug(compose.vision)}+{slug(compose.language)}-{compose.connector}-s{seed}-{digest}"


def composed_checkpoint(compose: ComposeConfig) -> str:
    """The composed LLaVA checkpoint folder for ``compose`` (built once into the model cache)."""
    vision, language = _resolve_part("vision", compose.vision), _resolve_part("language", compose.language)
    seed = compose.seed if compose.seed is not None else 0
    target = cache_root() / "composed" / composed_key(compose)
    return build_once(target, lambda out: build_composed(vision, language, compose.connector, seed, out))


def _load_part(key: str, path: str, load):
    try:
        return load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.compose.{key}: cannot load {path!r}: {first_line(exc)}") from exc


def _add_tokens(tokenizer) -> None:
    """``<image>`` as a special token, and ``<pad>`` when the tokenizer has no pad token."""
    from tokenizers import AddedToken

    if IMAGE_TOKEN not in tokenizer.get_added_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


def build_composed(vision_path: str, language_path: str, connector: str, seed: int, out: Path) -> None:
    """Assemble the parts into a LLaVA checkpoint (model and processor) saved to ``out``."""
    import transformers
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    model_type = _load_part("vision", vision_path, lambda p: AutoConfig.from_pretrained(p).model_type)
    if model_type not in _VISION:
        raise ConfigError(
            f"model.compose.vision: {vision_path!r} is a {model_type!r} checkpoint; expected a CLIP or SigLIP "
            f"model ({', '.join(sorted(_VISION))})"
        )
    class_name, select, additional = _VISION[model_type]
    vision = _load_part("vision", vision_path, getattr(transformers, class_name).from_pretrained)
    image_processor = _load_part("vision", vision_path, AutoImageProcessor.from_pretrained)
    language = _load_part("language", language_path, AutoModelForCausalLM.from_pretrained)
    tokenizer = _load_part("language", language_path, AutoTokenizer.from_pretrained)
    _add_tokens(tokenizer)

    config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=language.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu" if connector == "mlp2x_gelu" else "linear",
        vision_feature_select_strategy=select,
        vision_feature_layer=-2,  # LLaVA's choice: the penultimate layer's features
        image_seq_length=(vision.config.image_size // vision.config.patch_size) ** 2,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=language.config.tie_word_embeddings,
    )
    torch.manual_seed(seed)  # the connector's (and new token rows') initialisation
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(language.get_decoder().state_dict())
    model.lm_head.load_state_dict(language.get_output_embeddings().state_dict())
    if connector == "linear":
        with torch.no_grad():
            projector = model.model.multi_modal_projector
            projector.linear_2.weight.copy_(torch.eye(projector.linear_2.weight.shape[0]))
            projector.linear_2.bias.zero_()
    model.resize_token_embeddings(len(tokenizer))
    model.generation_config = language.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    template = tokenizer.chat_template
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.config.patch_size,
        vision_feature_select_strategy=select,
        num_additional_image_tokens=additional,
        image_token=IMAGE_TOKEN,
        chat_template=IMAGE_CONTENT_PREAMBLE + template if template else None,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
