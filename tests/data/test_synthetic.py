"""Tests for the synthetic VQAv2-schema generator."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fedumm.data.synthetic import ANSWER_TYPES, COLORS, SHAPES, T2I_TAGS, make_synthetic_t2i, make_synthetic_vqa

VQA_COLUMNS = {
    "image",
    "question",
    "answers",
    "multiple_choice_answer",
    "answer_type",
    "question_id",
    "image_id",
}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_synthetic_vqa(num_samples=40, seed=0)


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, 3)]


def _coloured_area(image: Image.Image) -> int:
    return int(np.asarray(image).any(axis=2).sum())


def _dominant_non_black(image: Image.Image) -> tuple[int, int, int]:
    counts = Counter(p for p in _pixels(image) if p != (0, 0, 0))
    return counts.most_common(1)[0][0]


def test_rows_have_exactly_the_vqav2_columns_and_types(rows: list[dict]) -> None:
    # Prepare / Execute: fixture. Assert
    assert len(rows) == 40
    for row in rows:
        assert set(row) == VQA_COLUMNS
        assert isinstance(row["image"], Image.Image)
        assert row["image"].mode == "RGB"
        assert row["image"].size == (32, 32)
        assert isinstance(row["question"], str) and row["question"].endswith("?")
        assert isinstance(row["answers"], list)
        assert all(isinstance(a, str) for a in row["answers"])
        assert isinstance(row["multiple_choice_answer"], str)
        assert row["answer_type"] in ANSWER_TYPES
        assert type(row["question_id"]) is int
        assert type(row["image_id"]) is int


def test_ten_answers_with_true_answer_as_clear_majority() -> None:
    # Prepare: heavy noise makes the majority rule actually bite.
    rows = make_synthetic_vqa(num_samples=200, seed=3, answer_noise=0.45)
    # Execute
    tallies = [Counter(r["answers"]) for r in rows]
    # Assert
    for row, tally in zip(rows, tallies):
        assert len(row["answers"]) == 10
        top, top_count = tally.most_common(1)[0]
        assert top == row["multiple_choice_answer"]
        assert top_count >= 6
    # The noise is real: some annotations disagree with the true answer.
    noisy = sum(10 - t[r["multiple_choice_answer"]] for r, t in zip(rows, tallies))
    assert noisy > 200


def test_noise_variants_are_plausible() -> None:
    # Prepare / Execute
    rows = make_synthetic_vqa(num_samples=200, seed=4, answer_noise=0.4)
    allowed = {
        "yes/no": {"yes", "no"},
        "color": set(COLORS),
        "shape": set(SHAPES),
        "count": {"1", "2", "3", "4", "one", "two", "three"},
    }
    # Assert
    for row in rows:
        assert set(row["answers"]) <= allowed[row["answer_type"]], row["answers"]
    count_answers = {a for r in rows if r["answer_type"] == "count" for a in r["answers"]}
    assert count_answers & {"one", "two", "three"}, "number-word variants should appear"


def test_zero_noise_gives_unanimous_answers() -> None:
    rows = make_synthetic_vqa(num_samples=20, seed=1, answer_noise=0.0)
    for row in rows:
        assert row["answers"] == [row["multiple_choice_answer"]] * 10


def test_answer_types_are_exactly_balanced(rows: list[dict]) -> None:
    counts = Counter(r["answer_type"] for r in rows)
    assert counts == {t: 10 for t in ANSWER_TYPES}


def test_same_arguments_give_identical_rows_and_pixels() -> None:
    # Prepare / Execute
    first = make_synthetic_vqa(num_samples=12, seed=7, split="train")
    second = make_synthetic_vqa(num_samples=12, seed=7, split="train")
    # Assert
    for a, b in zip(first, second):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}


def test_splits_differ_and_have_disjoint_ids() -> None:
    # Prepare / Execute
    train = make_synthetic_vqa(num_samples=50, seed=7, split="train")
    test = make_synthetic_vqa(num_samples=50, seed=7, split="test")
    # Assert
    same_pixels = sum(a["image"].tobytes() == b["image"].tobytes() for a, b in zip(train, test))
    assert same_pixels < 10
    train_qids = {r["question_id"] for r in train}
    test_qids = {r["question_id"] for r in test}
    assert len(train_qids) == 50 and len(test_qids) == 50
    assert not train_qids & test_qids
    assert not {r["image_id"] for r in train} & {r["image_id"] for r in test}


def test_shorter_run_is_prefix_of_longer_run() -> None:
    short = make_synthetic_vqa(num_samples=5, seed=2)
    long = make_synthetic_vqa(num_samples=9, seed=2)
    assert [r["question"] for r in short] == [r["question"] for r in long[:5]]
    assert [r["image"].tobytes() for r in short] == [r["image"].tobytes() for r in long[:5]]


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_pixel_colour_matches_colour_answer(image_size: int) -> None:
    # Prepare
    rows = make_synthetic_vqa(num_samples=80, seed=5, image_size=image_size)
    colour_rows = [r for r in rows if r["answer_type"] == "color"]
    # Execute / Assert
    assert len(colour_rows) == 20
    for row in colour_rows:
        assert row["image"].size == (image_size, image_size)
        assert _dominant_non_black(row["image"]) == COLORS[row["multiple_choice_answer"]]


def test_shapes_are_visible_and_sized_about_a_quarter() -> None:
    # Prepare: one shape per image, so the coloured area is one shape's area.
    rows = make_synthetic_vqa(num_samples=30, seed=6, max_count=1)
    # Execute
    areas = [_coloured_area(r["image"]) for r in rows]
    # Assert: an 8x8 box at 32x32 holds 64 px; a triangle fills about half of it.
    assert min(areas) >= 20
    assert max(areas) <= 64


@pytest.mark.parametrize("max_count", [1, 3, 5])
def test_count_answers_in_range(max_count: int) -> None:
    rows = make_synthetic_vqa(num_samples=80, seed=8, max_count=max_count)
    counts = [int(r["multiple_choice_answer"]) for r in rows if r["answer_type"] == "count"]
    assert len(counts) == 20
    assert all(1 <= c <= max_count for c in counts)
    if max_count > 1:
        assert len(set(counts)) > 1


def test_count_questions_name_the_drawn_shape_and_colour_count_matches() -> None:
    # Prepare: non-overlapping shapes, so colour area grows with the count.
    rows = make_synthetic_vqa(num_samples=40, seed=9, max_count=3, image_size=64)
    for row in (r for r in rows if r["answer_type"] == "count"):
        # Execute
        shape = row["question"].removeprefix("how many ").removesuffix("s are there?")
        area = _coloured_area(row["image"])
        # Assert: a 16x16 box is at most 256 px per shape; at least ~100 px for a triangle.
        assert shape in SHAPES
        n = int(row["multiple_choice_answer"])
        assert 100 * n <= area <= 256 * n


def test_yes_no_roughly_balanced() -> None:
    rows = make_synthetic_vqa(num_samples=800, seed=10)
    answers = [r["multiple_choice_answer"] for r in rows if r["answer_type"] == "yes/no"]
    assert len(answers) == 200
    assert 0.4 <= answers.count("yes") / len(answers) <= 0.6


def test_yes_no_questions_ask_true_pair_or_change_one_attribute() -> None:
    # Prepare: the drawn pixels' colour is the truth for the image.
    rows = make_synthetic_vqa(num_samples=400, seed=11)
    name_of = {rgb: name for name, rgb in COLORS.items()}
    no_with_other_colour = no_with_same_colour = 0
    for row in (r for r in rows if r["answer_type"] == "yes/no"):
        # Execute
        asked_colour, asked_shape = row["question"].removeprefix("is there a ").removesuffix("?").split()
        true_colour = name_of[_dominant_non_black(row["image"])]
        # Assert
        assert asked_colour in COLORS and asked_shape in SHAPES
        if row["multiple_choice_answer"] == "yes":
            assert asked_colour == true_colour
        elif asked_colour == true_colour:
            no_with_same_colour += 1  # so the shape was changed
        else:
            no_with_other_colour += 1
    # Both kinds of "no" (wrong colour, wrong shape) occur, about equally often.
    no_total = no_with_other_colour + no_with_same_colour
    assert no_total > 30
    assert 0.25 <= no_with_other_colour / no_total <= 0.75


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 15}, "image_size"),
        ({"max_count": 0}, "max_count"),
        ({"answer_noise": 0.5}, "answer_noise"),
        ({"answer_noise": -0.1}, "answer_noise"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, name: str) -> None:
    args = {"num_samples": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        make_synthetic_vqa(**args)


# ---------------------------------------------------------------- text-to-image split

T2I_COLUMNS = {
    "task",
    "prompt",
    "image",
    "geneval",
    "question",
    "answers",
    "multiple_choice_answer",
    "tag",
    "color",
    "shape",
    "image_id",
}


def test_t2i_rows_follow_the_contract_and_cycle_the_six_tags() -> None:
    # Execute
    rows = make_synthetic_t2i(12, seed=0)
    # Assert
    assert all(set(r) == T2I_COLUMNS for r in rows)
    assert [r["tag"] for r in rows] == list(T2I_TAGS) * 2
    assert all(r["task"] == "t2i" and r["question"] == "" and r["answers"] == [] for r in rows)
    assert all(r["geneval"]["prompt"] == r["prompt"] and r["geneval"]["tag"] == r["tag"] for r in rows)
    assert all(isinstance(r["image"], Image.Image) and r["image"].size == (32, 32) for r in rows)


def test_t2i_prompts_match_metadata_and_pixels() -> None:
    rows = make_synthetic_t2i(60, seed=1, image_size=64)
    for row in rows:
        meta, prompt = row["geneval"], row["prompt"]
        include = meta["include"]
        # Every named class and colour is in the prompt; the colour column is a drawn colour.
        assert all(c["class"] in prompt and c.get("color", "") in prompt for c in include)
        assert row["color"] in prompt and row["shape"] in prompt and prompt.split()[1] in (row["color"], "red")
        drawn = {p for p in _pixels(row["image"]) if p != (0, 0, 0)}
        assert COLORS[row["color"]] in drawn
        if row["tag"] == "counting":
            n = include[0]["count"]
            assert meta["exclude"] == [{"class": include[0]["class"], "count": n + 1}]
            assert prompt.startswith(("two ", "three ")) and 2 <= n <= 3
        if row["tag"] in ("colors", "color_attr"):
            assert all("color" in c for c in include)
        else:
            assert not any("color" in c for c in include)
        if row["tag"] == "position":
            relation = include[1]["position"][0]
            assert include[1]["position"] == [relation, 0] and f" {relation} " in prompt
            # GenEval's order: the reference object (named last) is the first clause.
            assert prompt.endswith(include[0]["class"]) and prompt.split()[2] == include[1]["class"]
        if row["tag"] == "color_attr":
            assert include[0]["color"] != include[1]["color"] and include[0]["class"] != include[1]["class"]


def test_t2i_articles() -> None:
    prompts = [r["prompt"] for r in make_synthetic_t2i(120, seed=2)]
    assert any(p.startswith("an orange ") for p in prompts)
    assert not any(" a orange" in f" {p}" for p in prompts)


def test_t2i_is_deterministic_prefix_stable_and_split_specific() -> None:
    a, b = make_synthetic_t2i(10, seed=3), make_synthetic_t2i(20, seed=3)
    test = make_synthetic_t2i(10, seed=3, split="test")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b[:10]]
    assert all(np.array_equal(np.asarray(x["image"]), np.asarray(y["image"])) for x, y in zip(a, b))
    assert {r["image_id"] for r in a}.isdisjoint(r["image_id"] for r in test)
    assert [r["prompt"] for r in a] != [r["prompt"] for r in test]
    # The VQA split of the same seed is a different set of scenes.
    vqa = make_synthetic_vqa(10, seed=3)
    assert not any(np.array_equal(np.asarray(x["image"]), np.asarray(y["image"])) for x, y in zip(a, vqa))


def test_t2i_tag_weights_set_the_proportions() -> None:
    rows = make_synthetic_t2i(40, seed=0, tags={"colors": 3, "position": 1})
    assert Counter(r["tag"] for r in rows) == {"colors": 30, "position": 10}
    assert [r["tag"] for r in rows[:4]] == ["colors", "position", "colors", "colors"]


def test_t2i_colours_are_roughly_uniform() -> None:
    counts = Counter(r["color"] for r in make_synthetic_t2i(600, seed=4))
    # 100 expected per colour; binomial sd ~9.1, so 60..140 is > 4 sd.
    assert set(counts) == set(COLORS) and all(60 <= n <= 140 for n in counts.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tags": {"counting": 1}, "max_count": 1}, "max_count must be >= 2"),
        ({"tags": {"shapes": 1}}, "unknown tag"),
        ({"tags": {"colors": 0}}, "every weight is 0"),
        ({"tags": {"colors": -1}}, "integers >= 0"),
        # A 32 px image holds at most 3 x 3 shapes of 8 px with their gaps.
        (
            {"tags": {"counting": 1}, "max_count": 10, "num_samples": 12},
            r"cannot place \d+ shapes of 8 px apart in a 32 px image",
        ),
    ],
)
def test_t2i_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic_t2i(**{"num_samples": 3, "seed": 0, **kwargs})
