"""Generic backend over ``AutoModelForImageTextToText`` (LLaVA-style VLMs and relatives).

Prompts go through the processor's chat template when it has one; the loss covers the answer
tokens (and the end-of-sequence token) only; evaluation decodes greedily.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedumm.errors import ConfigError
from fedumm.models.base import Backend
from fedumm.models.registry import register_backend
from fedumm.models.tiny import resolve_model_path

IGNORE_INDEX = -100

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_backend("hf_vlm")
class HFVisionLanguageBackend(Backend):
    lora_presets = {
        "attention": r".*language_model.*\.(q_proj|k_proj|v_proj)",
        "attention_qkvo": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
        "all_linear": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    }
    module_groups = {
        "vision": r"(.*\.)?vision_tower\..*",
        "connector": r"(.*\.)?multi_modal_projector\..*",
        "language": r"(.*\.)?(language_model|lm_head)\..*",
    }

    def load(self) -> torch.nn.Module:
        from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

        path = resolve_model_path(self.config.name_or_path)
        try:
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=_DTYPES[self.config.dtype]
            )
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model.name_or_path: cannot load {path!r}: {first_line}") from exc
        # AutoProcessor silently falls back to a bare tokenizer when no processor is saved.
        if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
            raise ConfigError(
                f"model.name_or_path: {path!r} has no multimodal processor "
                f"(AutoProcessor returned {type(processor).__name__})"
            )
        model.requires_grad_(False)
        model.to(self.device)
        self.model, self.processor = model, processor
        return model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompt(self, question: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return f"{self.processor.image_token} {question}"

    def _encode_prompts(self, samples: Sequence[dict], padding_side: str):
        self.tokenizer.padding_side = padding_side
        return self.processor(
            images=[s["image"] for s in samples],
            text=[self.prompt(s["question"]) for s in samples],
            return_tensors="pt",
            padding=True,
        )

    def training_batch(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Prompt tokens (from the processor, image tokens expanded) + answer tokens + EOS.

        The answer is tokenised separately and appended, so the label boundary is exact for
        any tokenizer (no prefix-tokenisation assumptions).
        """
        encoded = self._encode_prompts(samples, padding_side="right")
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        eos = self.tokenizer.eos_token_id
        rows, labels = [], []
        for i, sample in enumerate(samples):
            prompt_ids = encoded["input_ids"][i, : prompt_lengths[i]].tolist()
            answer_ids = self.tokenizer(
                " " + sample["multiple_choice_answer"], add_special_tokens=False
            )["input_ids"] + [eos]
            rows.append(prompt_ids + answer_ids)
            labels.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, lab) in enumerate(zip(rows, labels)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(row)] = 1
        batch = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
        batch.update(input_ids=input_ids, attention_mask=attention, labels=label_ids)
        return batch

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, samples: Sequence[dict]) -> list[str]:
        encoded = self.to_device(dict(self._encode_prompts(samples, padding_side="left")))
        if "pixel_values" in encoded:
            encoded["pixel_values"] = encoded["pixel_values"].to(_DTYPES[self.config.dtype])
        output = model.generate(
            **encoded,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
