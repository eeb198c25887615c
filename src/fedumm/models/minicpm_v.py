"""MiniCPM-V 4.6 / 4.7 (OpenBMB) through transformers' native classes, without torchvision.

``MiniCPMV4_6Processor`` and ``MiniCPMV4_7Processor`` take a video processor, and MiniCPM-V's
video processor needs torchvision, so the stock processors cannot be built from a checkpoint
folder here even for images. The processors below are the stock ones minus the video part:
their ``__call__`` (image slicing by ``MiniCPMV4_6ImageProcessorPil``: a resized overview image
plus a grid of slices for large images, each expanded to ``<image>``/``<slice>``-wrapped image
tokens, with ``<image_id>N</image_id>`` tags) runs unchanged; a prompt with video fails in the
stock code as it would without torchvision. They read and write the same files (tokenizer,
image processor, chat template), so a checkpoint folder works with either.

This module imports transformers at the top; ``hf_vlm`` imports it only when a MiniCPM-V
checkpoint is loaded.
"""

from __future__ import annotations

from transformers import MiniCPMV4_6Processor, MiniCPMV4_7Processor
from transformers.processing_utils import ProcessorMixin

#: The tokenizer's named special tokens MiniCPM-V's processor reads.
TOKEN_ATTRIBUTES = (
    "image_token",
    "image_token_id",
    "video_token",
    "video_token_id",
    "image_start_token",
    "image_end_token",
    "slice_start_token",
    "slice_end_token",
    "image_id_start_token",
    "image_id_end_token",
)


def _init_images_only(processor, image_processor, tokenizer, chat_template, kwargs) -> None:
    """What the stock ``__init__`` sets, minus the video processor (ProcessorMixin reads the
    sub-processors from the ``__init__`` signature, so none is expected or saved)."""
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template, **kwargs)
    processor.slice_mode = image_processor.slice_mode
    processor.default_use_image_id = image_processor.use_image_id
    processor.image_token_divisor = 4 if image_processor.downsample_mode == "4x" else 16
    for name in TOKEN_ATTRIBUTES:
        setattr(processor, name, getattr(tokenizer, name))


class MiniCPMV46ImageProcessor(MiniCPMV4_6Processor):
    """``MiniCPMV4_6Processor`` for images (no video processor, so no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_images_only(self, image_processor, tokenizer, chat_template, kwargs)


class MiniCPMV47ImageProcessor(MiniCPMV4_7Processor):
    """``MiniCPMV4_7Processor`` for images (no video processor, so no torchvision); it returns
    ``mm_token_type_ids`` for the model's canvas M-RoPE."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _init_images_only(self, image_processor, tokenizer, chat_template, kwargs)


PROCESSORS = {"minicpmv4_6": MiniCPMV46ImageProcessor, "minicpmv4_7": MiniCPMV47ImageProcessor}


def load_processor(path: str, model_type: str):
    """The images-only processor of a MiniCPM-V 4.6 / 4.7 checkpoint folder (or hub repo)."""
    return PROCESSORS[model_type].from_pretrained(path)
