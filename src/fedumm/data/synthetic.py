"""Deterministic synthetic VQA data: coloured shapes on black, in the VQAv2 row schema.

Each row has the same columns as a VQAv2 row (``image``, ``question``, ``answers``,
``multiple_choice_answer``, ``answer_type``, ``question_id``, ``image_id``), so the rest of
the pipeline (processors, collators, metrics) runs on it unchanged. Every question is
answerable from the pixels, which makes it a fast, offline sanity task for fine-tuning.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (250, 230, 30),
    "purple": (150, 40, 200),
    "orange": (255, 140, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
ANSWER_TYPES: tuple[str, ...] = ("yes/no", "color", "count", "shape")

NUM_ANNOTATORS = 10
# The true answer must stay the clear majority, as it (almost always) is in VQAv2.
MIN_CORRECT_ANNOTATIONS = 6
# Ids of different splits live in disjoint blocks as long as a split has fewer images.
_SPLIT_ID_BLOCK = 100_000
_PLACEMENT_TRIES = 50
_NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)


def _validate(num_samples: int, image_size: int, max_count: int, answer_noise: float) -> None:
    """Raise ValueError naming the first argument outside its allowed range."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if not 0.0 <= answer_noise < 0.5:
        raise ValueError(f"answer_noise must be in [0, 0.5), got {answer_noise}")


def _split_key(split: str) -> int:
    """A per-process-stable integer for a split name (hash() is salted per process)."""
    return zlib.crc32(split.encode("utf-8"))


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One generator per sample, so row i does not depend on num_samples."""
    # SeedSequence needs non-negative entropy; fold any int seed into 64 bits.
    return np.random.default_rng([seed % 2**64, _split_key(split), index])


def _image_id(split: str, index: int) -> int:
    """An image id in a split-specific block; question ids derive from it as in VQAv2."""
    return (_split_key(split) % 1000) * _SPLIT_ID_BLOCK + index


def _shape_size(image_size: int) -> int:
    """Side of a shape's bounding box: about a quarter of the image, never tiny."""
    return max(4, round(image_size / 4))


def _overlaps(box: tuple[int, int], others: list[tuple[int, int]], size: int) -> bool:
    """Whether a box at top-left ``box`` touches any placed box (1 px gap kept)."""
    x, y = box
    return any(abs(x - ox) <= size and abs(y - oy) <= size for ox, oy in others)


def _place_shapes(rng: np.random.Generator, count: int, image_size: int, size: int) -> list[tuple[int, int]]:
    """Random top-left corners, non-overlapping where the image has room for it."""
    placed: list[tuple[int, int]] = []
    high = image_size - size + 1
    for _ in range(count):
        box = (int(rng.integers(0, high)), int(rng.integers(0, high)))
        for _ in range(_PLACEMENT_TRIES):
            if not _overlaps(box, placed, size):
                break
            box = (int(rng.integers(0, high)), int(rng.integers(0, high)))
        placed.append(box)
    return placed


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, size: int, rgb: tuple[int, int, int]) -> None:
    """Draw one filled shape in its size×size box (no anti-aliasing: pixels are exact colours)."""
    right, bottom = x + size - 1, y + size - 1
    if shape == "circle":
        draw.ellipse((x, y, right, bottom), fill=rgb)
    elif shape == "square":
        draw.rectangle((x, y, right, bottom), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(x, bottom), (right, bottom), ((x + right) / 2, y)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_image(shape: str, color: str, corners: list[tuple[int, int]], image_size: int) -> Image.Image:
    """An RGB image on black with one ``shape`` in ``color`` at each top-left corner."""
    image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    size = _shape_size(image_size)
    for x, y in corners:
        _draw_shape(draw, shape, x, y, size, COLORS[color])
    return image


def _other(rng: np.random.Generator, options: tuple[str, ...], exclude: str) -> str:
    """A uniformly random option different from ``exclude``."""
    rest = [o for o in options if o != exclude]
    return rest[int(rng.integers(len(rest)))]


def _question(rng: np.random.Generator, answer_type: str, shape: str, color: str, count: int) -> tuple[str, str]:
    """The (question, true answer) for one image and answer type."""
    if answer_type == "color":
        return f"what color is the {shape}?", color
    if answer_type == "shape":
        return "what shape is in the image?", shape
    if answer_type == "count":
        return f"how many {shape}s are there?", str(count)
    # yes/no: ask about the true colour+shape half the time, else change exactly one of them.
    if rng.random() < 0.5:
        return f"is there a {color} {shape}?", "yes"
    if rng.random() < 0.5:
        return f"is there a {_other(rng, tuple(COLORS), color)} {shape}?", "no"
    return f"is there a {color} {_other(rng, SHAPES, shape)}?", "no"


def _confusion(rng: np.random.Generator, answer_type: str, answer: str, max_count: int) -> str:
    """A plausible wrong or differently-worded annotation, as human annotators give."""
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "color":
        return _other(rng, tuple(COLORS), answer)
    if answer_type == "shape":
        return _other(rng, SHAPES, answer)
    n = int(answer)
    options = [str(m) for m in (n - 1, n + 1) if 1 <= m <= max(max_count, n + 1)]
    if n < len(_NUMBER_WORDS):
        options.append(_NUMBER_WORDS[n])
    return options[int(rng.integers(len(options)))]


def _annotations(
    rng: np.random.Generator, answer_type: str, answer: str, max_count: int, answer_noise: float
) -> list[str]:
    """Ten annotations: each noisy with prob. ``answer_noise``, true answer kept >= 6 times."""
    answers = [
        _confusion(rng, answer_type, answer, max_count) if rng.random() < answer_noise else answer
        for _ in range(NUM_ANNOTATORS)
    ]
    # Restore the first noisy annotations until the true answer is the clear majority.
    for k in range(NUM_ANNOTATORS):
        if answers.count(answer) >= MIN_CORRECT_ANNOTATIONS:
            break
        answers[k] = answer
    return answers


def _make_row(index: int, seed: int, split: str, image_size: int, max_count: int, answer_noise: float) -> dict:
    """One VQAv2-schema row; all randomness comes from the sample's own generator."""
    rng = _sample_rng(seed, split, index)
    answer_type = ANSWER_TYPES[index % len(ANSWER_TYPES)]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
    count = int(rng.integers(1, max_count + 1))
    corners = _place_shapes(rng, count, image_size, _shape_size(image_size))
    question, answer = _question(rng, answer_type, shape, color, count)
    image_id = _image_id(split, index)
    return {
        "image": render_image(shape, color, corners, image_size),
        "question": question,
        "answers": _annotations(rng, answer_type, answer, max_count, answer_noise),
        "multiple_choice_answer": answer,
        "answer_type": answer_type,
        # VQAv2 numbers an image's questions image_id * k + j; one question per image here.
        "question_id": image_id * 10,
        "image_id": image_id,
    }


def make_synthetic_vqa(
    num_samples: int,
    seed: int,
    split: str = "train",
    image_size: int = 32,
    max_count: int = 3,
    answer_noise: float = 0.1,
) -> list[dict]:
    """Generate ``num_samples`` deterministic synthetic VQA rows in the VQAv2 schema.

    Each image shows 1..``max_count`` copies of one shape in one colour on black.
    Sample ``i`` gets answer type ``ANSWER_TYPES[i % 4]``, so types are evenly balanced.
    The same arguments always give identical rows (pixels included); different ``split``
    names give different rows and disjoint ids (for splits of up to 100,000 images).
    Row ``i`` is independent of ``num_samples``, so a longer list extends a shorter one.

    Raises:
        ValueError: if num_samples < 1, image_size < 16, max_count < 1, or
            answer_noise is outside [0, 0.5).
    """
    _validate(num_samples, image_size, max_count, answer_noise)
    return [_make_row(i, seed, split, image_size, max_count, answer_noise) for i in range(num_samples)]
