"""Janus / Janus-Pro (DeepSeek): ``JanusForConditionalGeneration`` with its ``JanusProcessor``,
for understanding and text-to-image generation.

Janus is a unified model with two visual paths into one Llama decoder (Wu et al. 2024,
"Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and Generation";
Chen et al. 2025, "Janus-Pro"):

* understanding: a SigLIP tower and an MLP aligner ("vision", "connector"); prompting (the
  chat template "<|User|>: <image_placeholder>\\n{question}\\n\\n<|Assistant|>:"), answer
  supervision and decoding are those of the generic backend (family "janus" in
  ``hf_vlm.FAMILIES``);
* generation: a VQ tokenizer turns the image into codes ("vq", frozen), the codes enter the
  decoder through the generation embeddings and aligner ("gen_embed", "gen_aligner") and are
  predicted by the generation head ("gen_head"); the decoder (LoRA by default) is shared.

A text-to-image row (task "t2i") trains as Janus does: the prompt in the chat template with the
image-start token appended (what ``JanusProcessor(generation_mode="image")`` writes), then the
image's codes; the loss is the cross-entropy of the generation head on the image tokens only
(labels -100 on the prompt). Prompts are left-padded so every row's image tokens sit at the end;
position ids count real tokens only. With probability ``train.cfg_dropout`` a row's prompt becomes
the unconditional prompt Janus samples with: every token but BOS and the image-start token
replaced by the pad token (``fedumm.models.generation``). Images are sampled through
``generate(generation_mode="image")`` with classifier-free guidance and decoded by the VQ model.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from fedumm.data.images import as_pil
from fedumm.models.generation import T2I, GenerationMixin, batch_task, target_image, unwrap
from fedumm.models.hf_vlm import FAMILIES, HFVisionLanguageBackend
from fedumm.models.registry import register_backend
from fedumm.types import IGNORE_INDEX


@contextlib.contextmanager
def _quiet_generation_logs() -> Iterator[None]:
    """Janus.generate hands a filled-in generation config back to GenerationMixin.generate,
    which then warns on every call that max_length and max_new_tokens are both set."""
    from transformers.utils import logging

    logger = logging.get_logger("transformers.generation.utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _ConditionalOnly:
    """Guidance scale 1: Janus's generate doubles the batch (conditional, unconditional) and adds
    no guidance processor at scale <= 1; keep the conditional half."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores[: scores.shape[0] // 2]


@register_backend("janus")
class JanusBackend(GenerationMixin, HFVisionLanguageBackend):
    default_model = "tiny-janus"
    lora_presets = FAMILIES["janus"].lora_presets()
    module_groups = FAMILIES["janus"].module_groups()
    model_class_name = "JanusForConditionalGeneration"
    model_types = ("janus",)

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, samples: Sequence[dict]) -> list[str]:
        with _quiet_generation_logs():
            return super().predict(model, samples)

    # -- generation batches ------------------------------------------------------------------

    @property
    def num_image_tokens(self) -> int:
        return self.model.config.vision_config.num_image_tokens

    def generation_prompt(self, prompt: str) -> str:
        """The chat turn for ``prompt`` plus the image-start token (Janus's generation prompt)."""
        turn = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prompt}]}], add_generation_prompt=True
        )
        return turn + self.processor.image_start_token

    def _encode_generation_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompt ids and attention mask (BOS added as the tokenizer does)."""
        self.tokenizer.padding_side = "left"
        texts = [self.generation_prompt(p) for p in prompts]
        kwargs = {}
        bos = self.tokenizer.bos_token
        if bos and all(t.startswith(bos) for t in texts):
            kwargs["add_special_tokens"] = False
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", **kwargs)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def unconditional(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Janus's unconditional prompt: every real token but BOS and image-start becomes pad."""
        keep = {self.tokenizer.bos_token_id, self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)}
        keep.discard(None)
        blank = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(sorted(keep)))
        return input_ids.masked_fill(blank, self.tokenizer.pad_token_id)

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """Images as the VQ model's input (the processor's resize and [-1, 1] normalisation)."""
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.model.dtype)

    @torch.no_grad()
    def image_tokens(self, images: Sequence) -> torch.Tensor:
        """VQ codes of ``images``: (rows, num_image_tokens), raster order."""
        vq = self.model.model.vqmodel
        codes = vq.encode(self.pixel_values(images)).image_tokens
        return codes.view(len(images), -1).cpu()

    def training_batch(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Understanding rows: the generic backend's batch. Text-to-image rows: left-padded
        generation prompts (``input_ids``, ``attention_mask``), the image's VQ codes
        (``image_tokens``) and ``labels`` over prompt + image positions, -100 but on the codes."""
        if batch_task(samples) != T2I:
            return super().training_batch(samples)
        encoded = self._encode_generation_prompts([s["prompt"] for s in samples])
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        dropped = torch.tensor(self.drop_prompts(len(samples)))
        if dropped.any():
            ids = torch.where(dropped[:, None], self.unconditional(ids, mask), ids)
        codes = self.image_tokens([target_image(s) for s in samples])
        labels = torch.cat([torch.full_like(ids, IGNORE_INDEX), codes], dim=1)
        return {"input_ids": ids, "attention_mask": mask, "image_tokens": codes, "labels": labels}

    def answer_logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Generation batch: generation-head logits over prompt + image positions (position t
        predicts label t + 1); understanding batch: the language model head's."""
        if "image_tokens" not in batch:
            return super().answer_logits(model, batch)
        janus = unwrap(model)
        text = janus.get_input_embeddings()(batch["input_ids"])
        image = janus.prepare_embeddings_for_image_generation(batch["image_tokens"])
        embeds = torch.cat([text, image.to(text.dtype)], dim=1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(batch["image_tokens"])], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = janus.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        return janus.model.generation_head(hidden)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "image_tokens" not in batch:
            return super().loss(model, batch)
        logits = self.answer_logits(model, batch)
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )

    # -- sampling and decoding ---------------------------------------------------------------

    def decode_images(self, codes: torch.Tensor) -> list[Image.Image]:
        """VQ codes (rows, num_image_tokens) -> PIL images through the VQ decoder and the
        processor's inverse normalisation."""
        with torch.no_grad():
            pixels = self.model.model.vqmodel.decode(codes.to(self.device)).float().clamp(-1, 1)
        return self.processor.postprocess(list(pixels.cpu()), return_tensors="PIL.Image.Image")["pixel_values"]

    def _image_generation_config(self, janus: torch.nn.Module):
        """The checkpoint's generation config with the ids Janus's image mode reads (BOS and pad
        for the unconditional prompt, ``generation_kwargs["boi_token_id"]``) from the tokenizer."""
        config = copy.deepcopy(janus.generation_config)
        config.bos_token_id, config.pad_token_id = self.tokenizer.bos_token_id, self.tokenizer.pad_token_id
        boi = self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)
        config.generation_kwargs = {**(getattr(config, "generation_kwargs", None) or {}), "boi_token_id": boi}
        return config

    @torch.no_grad()
    def generate_images(
        self, model: torch.nn.Module, prompts: Sequence[str], *, cfg_scale: float, seed: int, temperature: float
    ) -> list[Image.Image]:
        """One image per prompt: ``generate(generation_mode="image")`` with guidance scale
        ``cfg_scale`` (>= 1), sampling at ``temperature`` (0: greedy), seeded by ``seed`` (the
        global RNG is left as it was)."""
        if cfg_scale < 1:
            raise ValueError(f"cfg_scale must be >= 1, got {cfg_scale}")
        from transformers import LogitsProcessorList

        janus = unwrap(model)
        encoded = {k: v.to(self.device) for k, v in self._encode_generation_prompts(prompts).items()}
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        processors = LogitsProcessorList([_ConditionalOnly()] if cfg_scale == 1 else [])
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                with _quiet_generation_logs():
                    codes = janus.generate(
                        **encoded,
                        generation_mode="image",
                        guidance_scale=cfg_scale,
                        logits_processor=processors,
                        generation_config=self._image_generation_config(janus),
                        max_new_tokens=self.num_image_tokens,
                        **sampling,
                    )
        finally:
            model.train(was_training)
        return self.decode_images(codes)

    @torch.no_grad()
    def reconstruct_images(self, images: Sequence) -> list[Image.Image]:
        """VQ encode then decode: the best any generated image can match (the checker's ceiling)."""
        return self.decode_images(self.image_tokens([as_pil(i) for i in images]))
