"""Emu3 (BAAI): ``Emu3ForConditionalGeneration``, fedumm's early-fusion, encoder-free family,
for understanding and text-to-image generation.

Emu3 (Wang et al. 2024, "Emu3: Next-Token Prediction is All You Need") has no vision encoder: a
VQ tokenizer turns an image into codes that are tokens of the decoder's own vocabulary
(``<|visual token NNNNNN|>``), one row of the code grid after another, each row closed by an
end-of-line token, wrapped as ``<|image start|>{h}*{w}<|image token|>...<|extra_201|><|image end|>``.
Understanding and generation are both next-token prediction over that one vocabulary:

* understanding (VQA): the processor expands the image into those tokens and the generic
  backend supervises the answer (family "emu3" in ``hf_vlm.FAMILIES``: groups "language" and
  "vq"; "vision" and "connector" are empty);
* generation: the prompt in the chat template followed by ``<|image start|>{h}*{w}<|image token|>``,
  then the image's code rows; the language-model loss covers the visual tokens only (labels
  -100 on the prompt and the end-of-line tokens, which sampling forces anyway). Prompt dropout
  for classifier-free guidance blanks the prompt's words to pad, keeping BOS and the image
  header (``fedumm.models.generation``); sampling runs ``generate`` with that unconditional
  prompt as ``negative_prompt_ids``, guidance scale ``eval.cfg_scale``, and a
  ``prefix_allowed_tokens_fn`` that allows visual tokens inside a row and end-of-line at its end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from fedumm.data.images import as_pil
from fedumm.models.generation import T2I, GenerationMixin, batch_task, target_image, unwrap
from fedumm.models.hf_vlm import FAMILIES, HFVisionLanguageBackend
from fedumm.models.registry import register_backend
from fedumm.types import IGNORE_INDEX


class _FrozenStatsBatchNorm3d(torch.nn.BatchNorm3d):
    """A BatchNorm3d that always normalises with its running statistics, as in eval mode.

    Emu3's VQ tokenizer has BatchNorm layers (``time_res_stack``). Fine-tuning puts the whole
    model in training mode, where they would normalise each batch by its own statistics (a
    row's image codes would depend on the other rows of its batch, and differ from the codes
    at evaluation) and move their running statistics (the frozen tokenizer would drift, in
    buffers that no adapter carries). Its parameters still train where a group selects them."""

    def train(self, mode: bool = True) -> _FrozenStatsBatchNorm3d:
        return super().train(False)


@register_backend("emu3")
class Emu3Backend(GenerationMixin, HFVisionLanguageBackend):
    default_model = "tiny-emu3"
    lora_presets = FAMILIES["emu3"].lora_presets()
    module_groups = FAMILIES["emu3"].module_groups()
    model_class_name = "Emu3ForConditionalGeneration"
    model_types = ("emu3",)

    def load(self) -> torch.nn.Module:
        model = super().load()
        for module in model.model.vqmodel.modules():
            if type(module) is torch.nn.BatchNorm3d:
                module.__class__ = _FrozenStatsBatchNorm3d
                module.eval()
        return model

    # -- image tokens ------------------------------------------------------------------------

    @property
    def mapping(self):
        return self.model.model.vocabulary_mapping

    def generation_grid(self) -> tuple[int, int]:
        """Rows and columns of codes a sampled image has: Emu3's square generation size for the
        processor's image area, capped by the image processor's largest image."""
        area = min(self.processor.image_area, self.processor.image_processor.max_pixels)
        return tuple(self.processor.calculate_generate_size("1:1", area, self.processor.downsample_ratio))

    @torch.no_grad()
    def image_codes(self, images: Sequence) -> list[torch.Tensor]:
        """Each image's VQ code grid (h, w), after the processor's resize and normalisation."""
        encoded = self.processor.image_processor(images=list(images), return_tensors="pt")
        pixels = encoded["pixel_values"].to(self.device, self.model.dtype)
        sizes = encoded["image_sizes"]
        return [c.cpu() for c in self.model.model.vqmodel.encode(pixels, sizes).image_tokens]

    def header(self, height: int, width: int) -> str:
        p = self.processor
        return f"{p.image_start_token}{height}*{width}{p.fake_token_around_image}"

    def generation_prompt(self, prompt: str, height: int, width: int) -> str:
        turn = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prompt}]}], add_generation_prompt=True
        )
        return f"{self.tokenizer.bos_token or ''}{turn}{self.header(height, width)}"

    def _prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def unconditional(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each row's words before the image header become pad; BOS and the header stay."""
        boi = self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)
        header_start = (input_ids == boi).int().argmax(dim=1, keepdim=True)
        positions = torch.arange(input_ids.shape[1])[None]
        words = attention_mask.bool() & (positions < header_start) & (input_ids != self.tokenizer.bos_token_id)
        return input_ids.masked_fill(words, self.tokenizer.pad_token_id)

    # -- training ----------------------------------------------------------------------------

    def training_batch(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Understanding rows: the generic backend's batch. Text-to-image rows, right-padded:
        prompt with image header, then the image's code rows in BPE ids (each closed by
        end-of-line); ``labels`` -100 but on the visual tokens."""
        if batch_task(samples) != T2I:
            return super().training_batch(samples)
        grids = self.image_codes([target_image(s) for s in samples])
        dropped = self.drop_prompts(len(samples))
        eol = self.mapping.eol_token_id
        rows, labels, prompt_lengths = [], [], []
        for sample, grid, drop in zip(samples, grids, dropped):
            prompt = self._prompt_ids(self.generation_prompt(sample["prompt"], *grid.shape))
            if drop:
                ids = torch.tensor([prompt])
                prompt = self.unconditional(ids, torch.ones_like(ids))[0].tolist()
            image = self.mapping.convert_img2bpe(grid).flatten().tolist()
            rows.append(prompt + image)
            labels.append([IGNORE_INDEX] * len(prompt) + [IGNORE_INDEX if t == eol else t for t in image])
            prompt_lengths.append(len(prompt))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, lab) in enumerate(zip(rows, labels)):
            input_ids[i, : len(row)] = torch.tensor(row)
            label_ids[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": label_ids}

    # -- sampling and decoding ---------------------------------------------------------------

    def decode_images(self, bpe_rows: torch.Tensor) -> list[Image.Image]:
        """BPE ids (rows, h, w + 1) -> PIL images through the VQ decoder."""
        with torch.no_grad():
            codes = self.mapping.convert_bpe2img(bpe_rows.cpu()).to(self.device)
            pixels = self.model.model.vqmodel.decode(codes).float().clamp(-1, 1)
        return self.processor.postprocess(list(pixels.cpu()), return_tensors="PIL.Image.Image")["pixel_values"]

    @torch.no_grad()
    def generate_images(
        self, model: torch.nn.Module, prompts: Sequence[str], *, cfg_scale: float, seed: int, temperature: float
    ) -> list[Image.Image]:
        """One image per prompt, sampled row by row with classifier-free guidance against the
        unconditional prompt (``cfg_scale`` >= 1; 1 = conditional only), at ``temperature``
        (0: greedy), seeded by ``seed`` (the global RNG is left as it was)."""
        if cfg_scale < 1:
            raise ValueError(f"cfg_scale must be >= 1, got {cfg_scale}")
        height, width = self.generation_grid()
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(
            [self.generation_prompt(p, height, width) for p in prompts],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        negative = self.unconditional(ids, mask)
        prompt_length = ids.shape[1]
        visual, eol = list(self.mapping.image_tokens), [self.mapping.eol_token_id]

        def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
            return eol if (sequence.shape[0] - prompt_length) % (width + 1) == width else visual

        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        guidance = (
            {
                "guidance_scale": cfg_scale,
                "negative_prompt_ids": negative.to(self.device),
                "negative_prompt_attention_mask": mask.to(self.device),
            }
            if cfg_scale > 1
            else {}
        )
        emu3 = unwrap(model)
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = emu3.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    prefix_allowed_tokens_fn=allowed,
                    max_new_tokens=height * (width + 1),
                    min_new_tokens=height * (width + 1),
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                    **guidance,
                )
        finally:
            model.train(was_training)
        return self.decode_images(out[:, prompt_length:].view(len(prompts), height, width + 1))

    @torch.no_grad()
    def reconstruct_images(self, images: Sequence) -> list[Image.Image]:
        """VQ encode then decode: the best any generated image can match (the checker's ceiling)."""
        grids = self.image_codes([as_pil(i) for i in images])
        return self.decode_images(torch.stack([self.mapping.convert_img2bpe(g) for g in grids]))
