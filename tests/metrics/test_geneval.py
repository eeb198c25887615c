"""Tests for the GenEval-style checker (fedumm.metrics.geneval) on hand-drawn and synthetic images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from fedumm.data.rows import GENEVAL_RELATIONS
from fedumm.data.synthetic import COLORS, T2I_TAGS, make_synthetic_t2i
from fedumm.errors import ConfigError, DataError
from fedumm.metrics import MetricOptions, get_task, summarize_task
from fedumm.metrics.geneval import (
    GENEVAL_TAGS,
    RELATIONS,
    DetectedObject,
    check_image,
    detect_objects,
    evaluate_t2i,
    geneval_records,
    metrics,
    relations,
    shape_of,
    summarize,
    t2i_metric_problem,
)

SIZE = 64


def _draw(objects: list[tuple[str, str, int, int, int]], size: int = SIZE) -> Image.Image:
    """(shape, colour, left, top, side) drawn on black with PIL."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for shape, color, x, y, side in objects:
        box = (x, y, x + side - 1, y + side - 1)
        if shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        elif shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        else:
            draw.polygon([(x, y + side - 1), (x + side - 1, y + side - 1), (x + (side - 1) / 2, y)], fill=COLORS[color])
    return image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _one(name: str, count: int = 1, **extra: object) -> dict:
    return {"class": name, "count": count, **extra}


# ---------------------------------------------------------------- detection


def test_detects_shape_colour_area_and_box_of_hand_drawn_objects() -> None:
    # Prepare: a 16 px red square at (4, 6), a 12 px blue circle, a 14 px green triangle.
    image = _draw([("square", "red", 4, 6, 16), ("circle", "blue", 40, 4, 12), ("triangle", "green", 20, 40, 14)])
    # Execute
    found = detect_objects(image, COLORS)
    # Assert: largest first; the square's area and box are exact.
    assert [(o.shape, o.color) for o in found] == [("square", "red"), ("circle", "blue"), ("triangle", "green")]
    assert (found[0].area, found[0].box) == (256, (4, 6, 20, 22))
    assert found[0].center == (12.0, 14.0) and found[0].size == (16, 16)


@pytest.mark.parametrize(
    ("mask", "shape"),
    [
        (np.ones((6, 6), bool), "square"),
        # Apex up, rows 1, 3, 5, 7 px wide: top half 4 px, bottom half 12 px of 16; asymmetry 0.5.
        (np.abs(np.arange(7) - 3)[None, :] <= np.arange(4)[:, None], "triangle"),
        (np.abs(np.arange(7) - 3)[None, :] <= np.arange(4)[::-1, None], "triangle"),  # apex down
        (np.ones((3, 9), bool), None),  # three times as long as wide: no shape
    ],
)
def test_shape_of_masks(mask: np.ndarray, shape: str | None) -> None:
    assert shape_of(mask) == shape


def test_grey_objects_have_no_palette_colour_and_dim_noise_is_background() -> None:
    # Prepare: a grey square (no palette hue) and a 1 px bright speck (below min_area).
    image = _draw([("square", "red", 2, 2, 12)])
    ImageDraw.Draw(image).rectangle((30, 30, 45, 45), fill=(128, 128, 128))
    image.putpixel((60, 60), (255, 0, 0))
    # Execute
    found = detect_objects(image, COLORS)
    # Assert
    assert [(o.shape, o.color) for o in found] == [("square", None), ("square", "red")]


def test_touching_shapes_of_different_colours_are_split() -> None:
    # Prepare: a red and a blue square sharing an edge.
    image = _draw([("square", "red", 10, 10, 16), ("square", "blue", 26, 10, 16)])
    # Execute
    found = detect_objects(image, COLORS)
    # Assert
    assert sorted((o.color, o.area) for o in found) == [("blue", 256), ("red", 256)]


# ---------------------------------------------------------------- relations and scoring


def _obj(x: int, y: int, side: int = 10, shape: str = "square", color: str = "red") -> DetectedObject:
    return DetectedObject(shape, color, side * side, (x, y, x + side, y + side))


def test_relations_by_hand() -> None:
    # a is 20 px left of b at the same height: offset (-20, 0), slack 0.1 * 20 = 2 -> dx = -18/20 = -0.9.
    assert relations(_obj(0, 0), _obj(20, 0)) == {"left of"}
    assert relations(_obj(20, 0), _obj(0, 0)) == {"right of"}
    assert relations(_obj(0, 0), _obj(0, 30)) == {"above"}
    # Diagonal: offset (-20, -20), revised (-18, -18) / 28.28 = -0.636 each: left of and above.
    assert relations(_obj(0, 0), _obj(20, 20)) == {"left of", "above"}
    # Mostly below, slightly left: offset (-4, 20) -> revised (-2, 18) / 20.4: dx = -0.098, dy = 0.882.
    assert relations(_obj(0, 20), _obj(4, 0)) == {"below"}
    # Overlapping centres within the slack: no relation.
    assert relations(_obj(0, 0), _obj(1, 1)) == set()


@pytest.mark.parametrize(
    ("objects", "metadata", "correct", "reason"),
    [
        ([("square", "red", 10, 10, 16)], {"include": [_one("square", color="red")]}, True, ""),
        (
            [("square", "blue", 10, 10, 16)],
            {"include": [_one("square", color="red")]},
            False,
            "expected red square>=1, found 0 red; and 1 blue",
        ),
        ([("circle", "red", 10, 10, 16)], {"include": [_one("square")]}, False, "expected square>=1, found 0"),
        (
            [("circle", "green", 4, 4, 12), ("circle", "green", 30, 30, 12)],
            {"include": [_one("circle", 3)], "exclude": [_one("circle", 4)]},
            False,
            "expected circle>=3, found 2",
        ),
        (
            [("circle", "green", 4, 4, 12), ("circle", "green", 30, 30, 12), ("circle", "green", 4, 40, 12)],
            {"include": [_one("circle", 2)], "exclude": [_one("circle", 3)]},
            False,
            "expected circle<3, found 3",
        ),
        (
            [("circle", "green", 4, 4, 12), ("circle", "green", 30, 30, 12)],
            {"include": [_one("circle", 2)], "exclude": [_one("circle", 3)]},
            True,
            "",
        ),
        (
            [("triangle", "yellow", 40, 20, 14), ("circle", "blue", 4, 20, 14)],
            {"include": [_one("triangle"), _one("circle", position=["left of", 0])]},
            True,
            "",
        ),
        (
            [("triangle", "yellow", 4, 20, 14), ("circle", "blue", 40, 20, 14)],
            {"include": [_one("triangle"), _one("circle", position=["left of", 0])]},
            False,
            "expected circle left of target, found right of target",
        ),
        (
            [("circle", "blue", 40, 20, 14)],
            {"include": [_one("triangle"), _one("circle", position=["above", 0])]},
            False,
            "expected triangle>=1, found 0\nno target for circle to be above",
        ),
        (
            # colour attribution swapped: a blue square and a red circle for "a red square and a blue circle".
            [("square", "blue", 4, 4, 16), ("circle", "red", 40, 40, 16)],
            {"include": [_one("square", color="red"), _one("circle", color="blue")]},
            False,
            "expected red square>=1, found 0 red; and 1 blue\nexpected blue circle>=1, found 0 blue; and 1 red",
        ),
    ],
    ids=[
        "right",
        "wrong-colour",
        "wrong-shape",
        "too-few",
        "too-many",
        "exact-count",
        "left-of",
        "right-of-instead",
        "missing-target",
        "colours-swapped",
    ],
)
def test_hand_drawn_verdicts(objects: list, metadata: dict, correct: bool, reason: str) -> None:
    # Execute
    result = check_image(_draw(objects), metadata, COLORS)
    # Assert
    assert (result.correct, result.reason) == (correct, reason)


def test_colour_is_judged_on_the_largest_objects_as_geneval_does() -> None:
    # GenEval checks colour on its most confident detections; here the largest: a big blue
    # square outranks the small red one, so "a red square" is wrong.
    image = _draw([("square", "blue", 4, 4, 24), ("square", "red", 40, 40, 12)])
    result = check_image(image, {"include": [_one("square", color="red")]}, COLORS)
    assert not result.correct and result.reason.startswith("expected red square>=1, found 0 red")


@pytest.mark.parametrize(
    "metadata",
    [
        {"include": [_one("dog")]},
        {"include": [_one("square", color="pink")]},
        {"include": [_one("square", 0)]},
        {"include": [_one("square"), _one("circle", position=["left of", 1])]},
        {"include": [_one("square"), _one("circle", position=["beside", 0])]},
        {"include": "square"},
    ],
)
def test_metadata_the_checker_cannot_score_is_an_error(metadata: dict) -> None:
    with pytest.raises(ValueError, match="geneval metadata"):
        check_image(_draw([("square", "red", 4, 4, 16)]), metadata, COLORS)


# ---------------------------------------------------------------- robustness and the synthetic targets


@pytest.mark.parametrize(
    "distort",
    [
        lambda im: _jpeg(im, 75),
        lambda im: _jpeg(im, 50),
        lambda im: im.filter(ImageFilter.GaussianBlur(1)),
        lambda im: Image.fromarray(
            np.clip(np.asarray(im) + np.random.default_rng(0).normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        ),
    ],
    ids=["jpeg75", "jpeg50", "blur1", "gauss20"],
)
def test_verdicts_survive_jpeg_blur_and_noise(distort) -> None:
    # Prepare: three of the cases above, distorted.
    cases = [
        ([("square", "red", 10, 10, 16)], {"include": [_one("square", color="red")]}, True),
        ([("square", "blue", 10, 10, 16)], {"include": [_one("square", color="red")]}, False),
        (
            [("triangle", "yellow", 40, 20, 14), ("circle", "purple", 4, 20, 14), ("circle", "purple", 20, 44, 14)],
            {"include": [_one("triangle"), _one("circle", 2, color="purple")], "exclude": [_one("circle", 3)]},
            True,
        ),
        (
            [("triangle", "orange", 4, 20, 14), ("circle", "green", 40, 20, 14)],
            {"include": [_one("triangle"), _one("circle", position=["left of", 0])]},
            False,
        ),
    ]
    for objects, metadata, correct in cases:
        # Execute / Assert
        assert check_image(distort(_draw(objects)), metadata, COLORS).correct is correct, objects


@pytest.mark.parametrize("image_size", [32, 64])
def test_checker_scores_the_synthetic_targets_at_least_98_percent(image_size: int) -> None:
    # Prepare: every category, 240 rows.
    rows = make_synthetic_t2i(240, seed=5, split="test", image_size=image_size)
    # Execute
    records = [{"tag": r["tag"], "correct": check_image(r["image"], r["geneval"], COLORS).correct} for r in rows]
    summary = summarize(records)
    # Assert
    assert summary["geneval_overall"] >= 0.98
    assert min(summary[f"geneval_{tag}"] for tag in GENEVAL_TAGS) >= 0.95


def test_checker_scores_jpeg_synthetic_targets_at_least_95_percent() -> None:
    rows = make_synthetic_t2i(120, seed=6, image_size=64)
    records = [
        {"tag": r["tag"], "correct": check_image(_jpeg(r["image"], 75), r["geneval"], COLORS).correct} for r in rows
    ]
    assert summarize(records)["geneval_images"] >= 0.95


def test_checker_rejects_targets_of_other_prompts() -> None:
    # Each row's image scored against the next row's metadata: mostly wrong (a mismatch can
    # still pass by chance, e.g. two single-object prompts of the same shape).
    rows = make_synthetic_t2i(120, seed=7)
    right = [check_image(a["image"], b["geneval"], COLORS).correct for a, b in zip(rows, rows[1:] + rows[:1])]
    assert np.mean(right) < 0.4


# ---------------------------------------------------------------- summary


def test_summary_is_the_mean_over_tags_as_in_geneval() -> None:
    # Prepare: 4 single_object images, 3 right; 1 counting image, wrong.
    records = [{"tag": "single_object", "correct": c} for c in (True, True, True, False)]
    records.append({"tag": "counting", "correct": False})
    # Execute
    summary = summarize(records)
    # Assert: overall = (0.75 + 0) / 2, not 3 / 5 (that is geneval_images).
    assert summary == {
        "geneval_overall": 0.375,
        "geneval_single_object": 0.75,
        "geneval_counting": 0.0,
        "geneval_images": 0.6,
    }


def test_metrics_add_the_mean_clip_score_when_present() -> None:
    records = [
        {"tag": "colors", "correct": True, "clip_score": 30.0},
        {"tag": "colors", "correct": False, "clip_score": 20.0},
    ]
    assert metrics(records) == pytest.approx(
        {"geneval_overall": 0.5, "geneval_colors": 0.5, "geneval_images": 0.5, "geneval_checked": 2, "clip_score": 25.0}
    )


def test_summary_needs_tag_and_correct() -> None:
    with pytest.raises(ValueError, match=r"record 1 \(0-based\) needs 'tag' and 'correct'"):
        summarize([{"tag": "colors", "correct": True}, {"correct": True}])
    with pytest.raises(ValueError, match="no records"):
        summarize([])


def test_tag_and_relation_names_agree_with_the_data_side() -> None:
    # data and metrics are sibling layers, so each names GenEval's tags and relations.
    assert T2I_TAGS == GENEVAL_TAGS and GENEVAL_RELATIONS == RELATIONS


# ---------------------------------------------------------------- evaluation helpers and the task


def test_evaluate_t2i_on_targets_and_on_blank_images() -> None:
    # Prepare: 12 synthetic rows (two per category); their targets and black images.
    rows = make_synthetic_t2i(12, seed=8)
    targets = [r["image"] for r in rows]
    black = [Image.new("RGB", (32, 32)) for _ in rows]
    # Execute
    right, blank = evaluate_t2i(rows, targets, COLORS), evaluate_t2i(rows, black, COLORS)
    # Assert
    assert (right["task"], right["n"], right["n_prompts"], right["geneval_overall"]) == ("t2i", 12, 12, 1.0)
    assert all(right[f"geneval_{tag}"] == 1.0 for tag in GENEVAL_TAGS)
    assert blank["geneval_overall"] == 0.0 and blank["records"][0]["reason"].startswith("expected ")


def test_geneval_records_with_samples_and_clip_scores() -> None:
    # Prepare: row 0 (single_object) gets its target and a black image; row 1 (two_object) its target.
    rows = make_synthetic_t2i(2, seed=9)
    rows[1] = {**rows[1], "client_id": 3}
    images = [[rows[0]["image"], Image.new("RGB", (32, 32))], [rows[1]["image"]]]
    # Execute
    records = geneval_records(rows, images, COLORS, clip_scores=[[30.0, 10.0], [20.0]])
    summary = evaluate_t2i(rows, images, COLORS, clip_scores=[[30.0, 10.0], [20.0]])
    # Assert: single_object 1 of 2, two_object 1 of 1 -> overall (0.5 + 1) / 2 = 0.75; images 2 / 3.
    assert [(r["row"], r["sample"], r["correct"], r["clip_score"]) for r in records] == [
        (0, 0, True, 30.0),
        (0, 1, False, 10.0),
        (1, 0, True, 20.0),
    ]
    assert "client_id" not in records[0] and records[2]["client_id"] == 3
    assert summary["geneval_overall"] == 0.75 and summary["geneval_images"] == pytest.approx(2 / 3)
    assert summary["clip_score"] == pytest.approx(20.0)


def test_geneval_records_errors() -> None:
    rows = make_synthetic_t2i(1, seed=0)
    with pytest.raises(ValueError, match="1 rows, 2 image lists"):
        geneval_records(rows, [rows[0]["image"]] * 2, COLORS)
    with pytest.raises(ValueError, match=r"row 0 \(0-based\) has 1 images but 2 clip scores"):
        geneval_records(rows, [rows[0]["image"]], COLORS, clip_scores=[[1.0, 2.0]])


def test_t2i_task_summary_through_the_registry() -> None:
    # Records of two clients: client 0 right on both of its images, client 1 wrong on its one.
    records = [
        {"tag": "colors", "correct": True, "client_id": 0},
        {"tag": "position", "correct": True, "client_id": 0},
        {"tag": "colors", "correct": False, "client_id": 1},
    ]
    summary = summarize_task(records, "t2i")
    assert (summary["task"], summary["n"], summary["geneval_overall"]) == ("t2i", 3, 0.75)
    assert summary["by_client"][0]["geneval_overall"] == 1.0 and summary["by_client"][1]["geneval_overall"] == 0.0
    assert get_task("t2i").baseline({"yes": 3}, [{"prompt": "p"}]) == ("yes", None)  # no baseline score


def test_colour_reason_lists_objects_without_a_palette_colour() -> None:
    # A grey square and a red square for "two blue squares": the reason names both kinds.
    image = _draw([("square", "red", 4, 4, 16)])
    ImageDraw.Draw(image).rectangle((40, 40, 55, 55), fill=(128, 128, 128))
    result = check_image(image, {"include": [_one("square", 2, color="blue")]}, COLORS)
    assert result.reason == "expected blue square>=2, found 0 blue; and 1 None, 1 red"


class ScriptedImageHost:
    """An ``ImageEvalHost`` with given images per prompt, reconstructions and token metrics."""

    palette = COLORS

    def __init__(self, drawn: dict, reconstructed: list, tokens: list, clips: list | None = None) -> None:
        self.drawn, self.reconstructed, self.tokens, self.clips = drawn, reconstructed, tokens, clips
        self.batches: list[int] = []

    def t2i_images(self, rows, batch_size):
        self.batches.append(batch_size)
        return [self.drawn[row["prompt"]] for row in rows]

    def reconstructions(self, rows):
        return self.reconstructed

    def row_image_token_metrics(self, rows):
        return self.tokens

    def clip_scores(self, images, prompts):
        return self.clips


def test_t2i_task_records_add_the_vq_ceiling_and_token_weighted_image_token_metrics() -> None:
    # Prepare: 4 rows, one per tag single_object, two_object, counting, colors (seed 5). The model
    # draws rows 0 and 3 right and 1, 2 black; the VQ round trip keeps rows 0, 1 and 3 (row 2 black);
    # row 3 has no target image (no reconstruction, no token metrics).
    rows = make_synthetic_t2i(4, seed=5)
    assert [r["geneval"]["tag"] for r in rows] == ["single_object", "two_object", "counting", "colors"]
    black = Image.new("RGB", (32, 32))
    drawn = {r["prompt"]: (r["image"] if i in (0, 3) else black) for i, r in enumerate(rows)}
    reconstructed = [rows[0]["image"], rows[1]["image"], black, None]
    tokens = [
        {"image_token_nll": 2.0, "image_token_accuracy": 0.5, "tokens": 10},
        {"image_token_nll": 4.0, "image_token_accuracy": 0.25, "tokens": 30},
        {"image_token_nll": 1.0, "image_token_accuracy": 1.0, "tokens": 0},
        None,
    ]
    host = ScriptedImageHost(drawn, reconstructed, tokens, clips=[10.0, 20.0, 30.0, 40.0])
    # Execute
    summary = get_task("t2i").evaluate(host, rows, 7, MetricOptions())
    # Assert: GenEval 1, 0, 0, 1 -> overall 0.5; the ceiling over rows 0..2: 1, 1, 0 -> (1 + 1 + 0) / 3;
    # tokens weighted by count: nll (2*10 + 4*30) / 40 = 3.5, accuracy (0.5*10 + 0.25*30) / 40 = 0.3125.
    assert host.batches == [7]
    assert (summary["n"], summary["geneval_overall"], summary["geneval_colors"]) == (4, 0.5, 1.0)
    assert summary["vq_ceiling"] == pytest.approx(2 / 3)
    assert (summary["vq_ceiling_single_object"], summary["vq_ceiling_counting"]) == (1.0, 0.0)
    assert "vq_ceiling_colors" not in summary and "vq_ceiling_images" not in summary
    assert summary["image_token_nll"] == pytest.approx(3.5)
    assert summary["image_token_accuracy"] == pytest.approx(0.3125)
    assert summary["clip_score"] == pytest.approx(25.0)


def test_t2i_metrics_without_references_have_no_ceiling_or_token_keys() -> None:
    summary = metrics([{"tag": "colors", "correct": True, "image_tokens": 0}])
    assert summary == {"geneval_overall": 1.0, "geneval_colors": 1.0, "geneval_images": 1.0, "geneval_checked": 1}


def _user_rows() -> list[dict]:
    """Two synthetic rows (single_object, two_object), a user's prompt/image pair without metadata
    and a GenEval prompt naming a COCO class (no target image)."""
    rows = make_synthetic_t2i(2, seed=5)
    user = {"prompt": "a lighthouse at dusk", "image": rows[0]["image"]}
    metadata = {"tag": "single_object", "include": [_one("dog", 1)]}
    dog = {"prompt": "a photo of a dog", "image": None, "geneval": metadata}
    return [*rows, user, dog]


def test_rows_the_checker_cannot_score_keep_token_metrics_and_clip_but_no_verdict() -> None:
    # Prepare: the model draws row 0 right and the rest black; rows 0..2 have a target (reconstruction
    # kept as it is); token metrics for rows 0..2; one CLIPScore per row.
    rows = _user_rows()
    black = Image.new("RGB", (32, 32))
    drawn = {r["prompt"]: (r["image"] if i == 0 else black) for i, r in enumerate(rows)}
    reconstructed = [rows[0]["image"], rows[1]["image"], rows[0]["image"], None]
    tokens = [
        {"image_token_nll": 2.0, "image_token_accuracy": 0.5, "tokens": 10},
        {"image_token_nll": 4.0, "image_token_accuracy": 0.25, "tokens": 10},
        {"image_token_nll": 6.0, "image_token_accuracy": 0.0, "tokens": 20},
        None,
    ]
    host = ScriptedImageHost(drawn, reconstructed, tokens, clips=[10.0, 20.0, 30.0, 40.0])
    # Execute
    records = get_task("t2i").make_records(get_task("t2i"), host, rows, 4)
    summary = get_task("t2i").summarize(records)
    # Assert: verdicts only on the two synthetic rows (1 right of 2 -> overall (1 + 0) / 2 = 0.5);
    # the ceiling over them only (both reconstructions right); tokens over all three targets:
    # accuracy (0.5*10 + 0.25*10 + 0*20) / 40 = 0.1875, nll (20 + 40 + 120) / 40 = 4.5; CLIPScore over all 4.
    assert [r["correct"] for r in records] == [True, False, None, None]
    assert records[2]["reason"] == "not checked: no 'geneval' metadata"
    assert records[3]["reason"].startswith("not checked: geneval metadata include[0]: class 'dog' cannot be checked")
    assert [("vq_correct" in r) for r in records] == [True, True, False, False]
    assert (summary["n"], summary["geneval_checked"], summary["geneval_overall"]) == (4, 2, 0.5)
    assert summary["vq_ceiling"] == 1.0
    assert summary["image_token_accuracy"] == pytest.approx(0.1875)
    assert summary["image_token_nll"] == pytest.approx(4.5)
    assert summary["clip_score"] == pytest.approx(25.0)


def test_t2i_metric_sets_the_primary_metric_of_the_run_only() -> None:
    from fedumm.metrics import build_evaluation

    rows = _user_rows()[2:3]  # the user's pair: nothing to check, a target image
    host = ScriptedImageHost({rows[0]["prompt"]: rows[0]["image"]}, [None], [_token(0.75)], clips=[33.0])
    # Execute
    single = build_evaluation("t2i", t2i_metric="image_token_accuracy")
    mixed = build_evaluation("multitask", {"vqa": 1.0, "t2i": 1.0}, t2i_metric="clip_score")
    summary = single.evaluate(host, rows, 4)
    # Assert: the run's primary metric; the registered task and the other tasks keep theirs.
    assert single.primary_metric == "image_token_accuracy" and summary["image_token_accuracy"] == 0.75
    assert summary["geneval_checked"] == 0 and "geneval_overall" not in summary
    assert mixed.tasks["t2i"].primary_metric == "clip_score" and mixed.tasks["vqa"].primary_metric == "vqa_accuracy"
    assert get_task("t2i").primary_metric == "geneval_overall"
    with pytest.raises(ConfigError, match=r"^eval.t2i_metric: 'fid'; expected one of geneval_overall, "):
        build_evaluation("t2i", t2i_metric="fid")


def _token(accuracy: float) -> dict:
    return {"image_token_nll": 1.0, "image_token_accuracy": accuracy, "tokens": 4}


def test_a_primary_metric_the_rows_cannot_give_is_refused_before_drawing() -> None:
    from fedumm.metrics import build_evaluation

    rows = _user_rows()
    host = ScriptedImageHost({r["prompt"]: r["image"] for r in rows[:3]}, [None] * 2, [_token(0.5)] * 2)
    # Execute / Assert: nothing checkable for geneval_overall; no target image for image_token_accuracy;
    # no CLIP model for clip_score. Nothing is drawn before the first two refusals.
    with pytest.raises(DataError, match=r"^eval.t2i_metric: geneval_overall, but none of the 2 text-to-image test "):
        build_evaluation("t2i").evaluate(host, rows[2:], 4)
    with pytest.raises(DataError, match=r"none of the 1 text-to-image test rows has a target image"):
        build_evaluation("t2i", t2i_metric="image_token_accuracy").evaluate(host, rows[3:], 4)
    assert host.batches == []
    with pytest.raises(DataError, match=r"^eval.t2i_metric: clip_score needs eval.clip_model"):
        build_evaluation("t2i", t2i_metric="clip_score").evaluate(host, rows[:2], 4)
    client = [dict(row, client_id=3) for row in rows[2:]]
    with pytest.raises(DataError, match=r"none of the 2 text-to-image test rows of client 3 can be checked"):
        build_evaluation("t2i").evaluate(host, client, 4)
    assert t2i_metric_problem("geneval_overall", rows[1:], list(COLORS), clip=False) is None
    assert t2i_metric_problem("geneval_overall", [], list(COLORS), clip=False) is None
