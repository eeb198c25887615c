"""Processors fedumm builds itself where the stock one cannot load.

``Qwen2VLProcessor`` (transformers) requires a video processor, and video processors need
torchvision; constructing it fails without torchvision even when only images are used.
``QwenVLImageTextProcessor`` does the image part of its work with the torchvision-free
``Qwen2VLImageProcessorPil``: it expands each image placeholder to the number of merged patches
the vision tower produces and returns ``mm_token_type_ids`` (1 on image tokens), which the
model needs for its multimodal rotary positions. It reads and writes the same files as the stock
processor's image and text parts, so a checkpoint folder works with either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_QWEN_IMAGE_TOKEN = "<|image_pad|>"


def read_chat_template(path: str) -> str | None:
    """chat_template.jinja or chat_template.json of a local folder or a hub repo, if any."""
    try:
        from transformers.utils import cached_file
    except ImportError:  # pragma: no cover - transformers always provides it
        return None
    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found:
            text = Path(found).read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


class QwenVLImageTextProcessor:
    """Images + text -> Qwen2-VL / Qwen2.5-VL model inputs, without a video processor."""

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.image_token = getattr(tokenizer, "image_token", None) or _QWEN_IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    @classmethod
    def from_pretrained(cls, path: str) -> QwenVLImageTextProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        return cls(image_processor, tokenizer, read_chat_template(path))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        if self.chat_template:
            (path / "chat_template.jinja").write_text(self.chat_template)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def num_image_tokens(self, grid_thw) -> int:
        return int(grid_thw.prod()) // self.image_processor.merge_size**2

    def __call__(
        self,
        images: Sequence[Any] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str = "pt",
        padding: bool | str = False,
        padding_side: str | None = None,
        **kwargs: Any,
    ):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text or [])
        image_inputs: dict[str, Any] = {}
        if images is not None:
            # One list per prompt (several images each) or one flat list, in placeholder order.
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            image_inputs = dict(self.image_processor(images=flat, return_tensors="pt"))
            grids = iter(image_inputs["image_grid_thw"])
            expanded = []
            for sample in texts:
                pieces = sample.split(self.image_token)
                out = pieces[0]
                for piece in pieces[1:]:
                    try:
                        grid = next(grids)
                    except StopIteration:
                        raise ValueError("more image tokens in the text than images") from None
                    out += self.image_token * self.num_image_tokens(grid) + piece
                expanded.append(out)
            if next(grids, None) is not None:
                raise ValueError("more images than image tokens in the text")
            texts = expanded
        tok_kwargs: dict[str, Any] = {"padding": padding, "return_tensors": "pt"}
        if padding_side is not None:
            tok_kwargs["padding_side"] = padding_side
        encoded = dict(self.tokenizer(texts, **tok_kwargs, **kwargs))
        encoded["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).int()
        return BatchFeature({**encoded, **image_inputs}, tensor_type=return_tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)
