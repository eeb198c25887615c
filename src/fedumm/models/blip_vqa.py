"""BLIP VQA (Salesforce blip-vqa-base/-capfilt-large): ``BlipForQuestionAnswering`` + ``BlipProcessor``.

BLIP answers with an encoder-decoder over text: a ViT encodes the image, a BERT text encoder
reads the question with cross-attention to the image, and a BERT decoder generates the answer
with cross-attention to the question. The prompt is the bare question ("[CLS] question [SEP]");
the answer is the decoder sequence "[DEC] answer [SEP]", supervised on the answer and [SEP].

LoRA presets (anchored on the text encoder and decoder; the ViT's fused ``qkv`` is never hit):

* ``qv_self`` = ``attention`` (the default, FedUMM's setting): query/value of the self-attention
  of encoder and decoder; r=16 on blip-vqa-base gives 1,179,648 trainable parameters.
* ``qkv``: query/key/value of self- and cross-attention; r=16 gives 3,538,944.
* ``all_linear``: every linear layer of the text encoder's and decoder's transformer layers
  (self- and cross-attention query/key/value/output, intermediate and output dense); not the
  ViT, not the decoder's prediction head; r=16 gives 7,667,712.

Module groups: "vision" = the ViT, "language" = text encoder + decoder. BLIP has no separate
projector between image and text: the image enters through the cross-attention layers inside
the text encoder, so "connector" is an empty group (it matches no parameter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedumm.errors import ConfigError
from fedumm.models.base import Backend
from fedumm.models.loading import load_error, load_frozen_model
from fedumm.models.registry import register_backend
from fedumm.models.tiny import resolve_model_path
from fedumm.types import IGNORE_INDEX

#: A regex that matches no parameter name (an empty module group).
NO_PARAMETERS = r"(?!)"

_QV_SELF = r"text_(encoder|decoder)\..*\.attention\.self\.(query|value)"
_QKV = r"text_(encoder|decoder)\..*\.(attention|crossattention)\.self\.(query|key|value)"
_ALL_LINEAR = r"text_(encoder|decoder)\..*\.layer\.\d+\..*\.(query|key|value|dense)"


@register_backend("blip_vqa")
class BlipVQABackend(Backend):
    default_model = "tiny-blip-vqa"
    lora_presets = {"attention": _QV_SELF, "qv_self": _QV_SELF, "qkv": _QKV, "all_linear": _ALL_LINEAR}
    module_groups = {
        "vision": r"vision_model\..*",
        "connector": NO_PARAMETERS,
        "language": r"text_(encoder|decoder)\..*",
    }

    def load(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoProcessor, BlipForQuestionAnswering

        path = resolve_model_path(self.name_or_path)
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
        except (OSError, ValueError, KeyError) as exc:
            raise load_error(path, exc) from exc
        if model_type != "blip":
            raise ConfigError(
                f"model.name_or_path: backend blip_vqa loads BLIP checkpoints, got model_type {model_type!r}"
            )
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, ImportError) as exc:
            raise load_error(path, exc) from exc
        if getattr(processor, "image_processor", None) is None:
            raise ConfigError(
                f"model.name_or_path: {path!r} has no multimodal processor "
                f"(AutoProcessor returned {type(processor).__name__})"
            )
        model = load_frozen_model(
            BlipForQuestionAnswering,
            path,
            self.config,
            self.device,
            skip_modules=("vision_model",),
            in_place_embeddings=True,
        )
        self.model, self.processor = model, processor
        return model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def text_config(self):
        return self.model.config.text_config

    def _encode_questions(self, samples: Sequence[dict]):
        encoded = self.processor(
            images=self.images_of(samples),
            text=[s["question"] for s in samples],
            return_tensors="pt",
            padding=True,
        )
        return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "pixel_values")}

    def label_smoothing(self) -> float:
        return float(self.text_config.label_smoothing)  # BlipTextLMHeadModel's loss smooths its targets

    def answer_ids(self, answer: str) -> list[int]:
        """Decoder targets after [DEC]: the answer tokens and [SEP] (the decoder's end token)."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ids + [self.text_config.sep_token_id]

    def training_batch(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Question inputs + decoder inputs "[DEC] answer [SEP]" (passed explicitly: BLIP would
        otherwise feed the labels, -100 included, to the decoder) + labels on answer and [SEP]."""
        batch = self._encode_questions(samples)
        bos, pad = self.text_config.bos_token_id, self.text_config.pad_token_id
        rows = [[bos] + self.answer_ids(s["multiple_choice_answer"]) for s in samples]
        width = max(len(r) for r in rows)
        decoder_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        decoder_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            decoder_ids[i, : len(row)] = torch.tensor(row)
            decoder_mask[i, : len(row)] = 1
            labels[i, 1 : len(row)] = torch.tensor(row[1:])  # [DEC] is input only
        batch.update(decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask, labels=labels)
        return batch

    def answer_logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder logits over "[DEC] answer [SEP]": the steps of BlipForQuestionAnswering.forward,
        which returns only the (label-smoothed) loss, not the logits."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        image = base.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        question = base.text_encoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return base.text_decoder(
            input_ids=batch["decoder_input_ids"],
            attention_mask=batch["decoder_attention_mask"],
            encoder_hidden_states=question,
            encoder_attention_mask=batch["attention_mask"],
        ).logits

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, samples: Sequence[dict]) -> list[str]:
        encoded = self.to_device(self._encode_questions(samples))
        # BLIP's generate starts the decoder from text_config.bos_token_id ([DEC]) and stops at
        # [SEP]; the output holds [DEC] + answer tokens.
        output = model.generate(**encoded, max_new_tokens=self.config.max_new_tokens, do_sample=False, use_cache=True)
        return [t.strip() for t in self.tokenizer.batch_decode(output, skip_special_tokens=True)]
