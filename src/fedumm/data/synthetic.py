"""Deterministic synthetic data: coloured shapes on black, as VQA rows or text-to-image rows.

``make_synthetic_vqa``: each row has the same columns as a VQAv2 row (``image``, ``question``,
``answers``, ``multiple_choice_answer``, ``answer_type``, ``question_id``, ``image_id``), so the
rest of the pipeline (processors, collators, metrics) runs on it unchanged. Every question is
answerable from the pixels, which makes it a fast, offline sanity task for fine-tuning.

``make_synthetic_t2i``: text-to-image rows from the same kind of scenes, one per GenEval
category (Ghosh et al. 2023, arXiv:2310.11513), each with the GenEval metadata that makes its
image checkable (``fedumm.metrics.geneval``); see that function.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from fedumm.data.rows import GENEVAL_RELATIONS

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


# ---------------------------------------------------------------- text-to-image split

#: GenEval's task tags (the same tuple as ``fedumm.metrics.geneval.GENEVAL_TAGS``; data and
#: metrics are sibling layers, so each names it), in GenEval's order.
T2I_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Attempts at a layout, and box draws per attempt.
_T2I_LAYOUTS = 100
_T2I_DRAWS = 400


def _t2i_schedule(tags: Mapping[str, int]) -> list[str]:
    """The repeating order of tags: round robin over the tags, each as often as its weight."""
    unknown = [t for t in tags if t not in T2I_TAGS]
    if unknown:
        raise ValueError(f"t2i_tags: unknown tag(s) {unknown}; expected some of {', '.join(T2I_TAGS)}")
    bad = {t: w for t, w in tags.items() if isinstance(w, bool) or not isinstance(w, int) or w < 0}
    if bad:
        raise ValueError(f"t2i_tags: weights must be integers >= 0, got {bad}")
    left = {t: tags.get(t, 0) for t in T2I_TAGS}
    if not any(left.values()):
        raise ValueError(f"t2i_tags: every weight is 0 ({dict(tags)}); give at least one tag a weight >= 1")
    schedule: list[str] = []
    while any(left.values()):
        for tag in T2I_TAGS:
            if left[tag]:
                schedule.append(tag)
                left[tag] -= 1
    return schedule


def t2i_capacity(image_size: int) -> int:
    """How many shapes a t2i scene of ``image_size`` px places reliably: half of a full grid of
    shapes with their gaps (random placement rarely packs a grid)."""
    size = _shape_size(image_size)
    per_side = (image_size - size) // (size + max(2, size // 4)) + 1
    return per_side * per_side // 2


def _apart(a: tuple[int, int], b: tuple[int, int], reach: int) -> bool:
    """Boxes at top-left ``a`` and ``b`` are separated along x or y by at least ``reach`` (size + gap)."""
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def _t2i_corners(
    rng: np.random.Generator, count: int, image_size: int, size: int, relation: str | None = None
) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` boxes with a gap of at least max(2, size/4) between any two
    (so blurred shapes do not merge). With ``relation`` (two boxes): the second box stands in
    that relation to the first, at least size + gap apart along its axis and at most size/2
    off it, which GenEval's position rule accepts with room to spare."""
    reach = size + max(2, size // 4)
    high = image_size - size + 1
    for _ in range(_T2I_LAYOUTS):
        placed: list[tuple[int, int]] = []
        for _ in range(_T2I_DRAWS):
            box = (int(rng.integers(0, high)), int(rng.integers(0, high)))
            if all(_apart(box, other, reach) for other in placed):
                placed.append(box)
                if len(placed) == count:
                    break
        if len(placed) < count:
            continue
        if relation is None:
            return placed
        (bx, by), (ax, ay) = placed
        along, across = {
            "left of": (bx - ax, ay - by),
            "right of": (ax - bx, ay - by),
            "above": (by - ay, ax - bx),
            "below": (ay - by, ax - bx),
        }[relation]
        if along >= reach and abs(across) <= size // 2:
            return placed
    raise ValueError(
        f"cannot place {count} shapes of {size} px apart in a {image_size} px image; use a larger image_size"
    )


def render_scene(objects: list[tuple[str, str, tuple[int, int]]], image_size: int) -> Image.Image:
    """An RGB image on black with each (shape, colour, top-left corner) drawn in its box."""
    image = Image.new("RGB", (image_size, image_size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    size = _shape_size(image_size)
    for shape, color, (x, y) in objects:
        _draw_shape(draw, shape, x, y, size, COLORS[color])
    return image


def _a(word: str) -> str:
    """``word`` with its indefinite article ("a red", "an orange")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _pick(rng: np.random.Generator, options: tuple[str, ...], count: int) -> list[str]:
    """``count`` distinct options, uniformly."""
    return [options[int(i)] for i in rng.choice(len(options), size=count, replace=False)]


def _t2i_scene(
    rng: np.random.Generator, tag: str, max_count: int
) -> tuple[str, dict, list[tuple[str, str]], str | None]:
    """(prompt, GenEval include/exclude, [(shape, colour)] to draw in prompt order, relation).

    Every prompt names the colour of each object it asks for, so the prompt fixes the scene
    up to placement; the metadata checks what GenEval checks for the tag (colours only in
    ``colors`` and ``color_attr``).
    """
    palette = tuple(COLORS)
    if tag in ("single_object", "colors"):
        (shape,), (color,) = _pick(rng, SHAPES, 1), _pick(rng, palette, 1)
        clause = {"class": shape, "count": 1, **({"color": color} if tag == "colors" else {})}
        return f"{_a(color)} {shape}", {"include": [clause]}, [(shape, color)], None
    if tag == "counting":
        (shape,), (color,) = _pick(rng, SHAPES, 1), _pick(rng, palette, 1)
        n = int(rng.integers(2, max_count + 1))
        include = [{"class": shape, "count": n}]
        exclude = [{"class": shape, "count": n + 1}]
        return (
            f"{_NUMBER_WORDS[n]} {color} {shape}s",
            {"include": include, "exclude": exclude},
            [(shape, color)] * n,
            None,
        )
    first, second = _pick(rng, SHAPES, 2)
    if tag == "color_attr":
        c1, c2 = _pick(rng, palette, 2)
        include = [{"class": first, "count": 1, "color": c1}, {"class": second, "count": 1, "color": c2}]
        return f"{_a(c1)} {first} and {_a(c2)} {second}", {"include": include}, [(first, c1), (second, c2)], None
    c1, c2 = (palette[int(i)] for i in rng.integers(0, len(palette), size=2))
    if tag == "two_object":
        include = [{"class": first, "count": 1}, {"class": second, "count": 1}]
        return f"{_a(c1)} {first} and {_a(c2)} {second}", {"include": include}, [(first, c1), (second, c2)], None
    # position: "a <first> <relation> a <second>"; GenEval lists the reference object first.
    relation = GENEVAL_RELATIONS[int(rng.integers(len(GENEVAL_RELATIONS)))]
    include = [{"class": second, "count": 1}, {"class": first, "count": 1, "position": [relation, 0]}]
    draw = [(second, c2), (first, c1)]
    return f"{_a(c1)} {first} {relation} {_a(c2)} {second}", {"include": include}, draw, relation


def _make_t2i_row(index: int, seed: int, split: str, image_size: int, max_count: int, schedule: list[str]) -> dict:
    """One text-to-image row; all randomness comes from the sample's own generator."""
    key = f"t2i/{split}"
    rng = _sample_rng(seed, key, index)
    tag = schedule[index % len(schedule)]
    prompt, clauses, draw, relation = _t2i_scene(rng, tag, max_count)
    size = _shape_size(image_size)
    corners = _t2i_corners(rng, len(draw), image_size, size, relation)
    # The prompt names its first object first; for position prompts that is the second drawn.
    named = draw[-1] if relation is not None else draw[0]
    return {
        "task": "t2i",
        "prompt": prompt,
        "image": render_scene([(shape, color, xy) for (shape, color), xy in zip(draw, corners)], image_size),
        "geneval": {"tag": tag, **clauses, "prompt": prompt},
        "question": "",
        "answers": [],
        "multiple_choice_answer": "",
        "tag": tag,
        "color": named[1],
        "shape": named[0],
        "image_id": _image_id(key, index),
    }


def make_synthetic_t2i(
    num_samples: int,
    seed: int,
    split: str = "train",
    image_size: int = 32,
    max_count: int = 3,
    tags: Mapping[str, int] | None = None,
) -> list[dict]:
    """Generate ``num_samples`` deterministic text-to-image rows (the t2i row contract).

    Scenes are coloured shapes on black as in ``make_synthetic_vqa``, drawn from a prompt in
    one of GenEval's categories (Ghosh et al. 2023), with its metadata in GenEval's form:

    - single_object "a red square": include the class;
    - two_object "a red square and a blue circle" (two shapes): include both classes;
    - counting "three red squares" (2..``max_count``): include count n, exclude n + 1;
    - colors "a red square": include the class with its colour;
    - position "a blue circle left of a green triangle" (left of / right of / above /
      below): include the reference, then the object with ``position: [relation, 0]``;
    - color_attr "a yellow triangle and a purple circle" (two shapes, two colours): both
      classes with their colours.

    Each row: ``task`` "t2i", ``prompt``, ``image`` (the rendered target), ``geneval``
    (``{"tag", "include", "exclude"?, "prompt"}``), ``tag``, ``color`` and ``shape`` of the
    object the prompt names first (``data.partition.label_column: color`` splits by it),
    ``image_id``, and the empty understanding columns. Row ``i`` has tag
    ``schedule[i % len(schedule)]``, where the schedule takes each tag of ``tags`` (weights,
    default 1 each) as often as its weight, round robin; rows are independent of
    ``num_samples`` and identical for identical arguments. Shapes keep a gap of at least
    max(2, size/4) px; a position prompt's objects are at least a shape apart along the
    relation's axis and at most half a shape off it.

    Raises:
        ValueError: if num_samples < 1, image_size < 16, a tag or weight is invalid, or
            counting has weight but max_count < 2.
    """
    _validate(num_samples, image_size, max_count, 0.0)
    schedule = _t2i_schedule(dict.fromkeys(T2I_TAGS, 1) if tags is None else tags)
    if "counting" in schedule and max_count < 2:
        raise ValueError(f"max_count must be >= 2 for counting prompts (two or more objects), got {max_count}")
    return [_make_t2i_row(i, seed, split, image_size, max_count, schedule) for i in range(num_samples)]
