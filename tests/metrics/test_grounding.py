"""Tests for fedumm.metrics.grounding: box parsing, IoU on hand-computed cases, the summary."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from fedumm.metrics import summarize_task
from fedumm.metrics.grounding import box_iou, metrics, parse_box, to_unit_box


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0.1, 0.2, 0.5, 0.6]", (0.1, 0.2, 0.5, 0.6)),
        ("The dog is at [10,20,30,40].", (10.0, 20.0, 30.0, 40.0)),
        ("[ .5 , 1 , 2.25 , 3e1 ] and [0, 0, 1, 1]", (0.5, 1.0, 2.25, 30.0)),  # the first box counts
        ("no box here", None),
        ("[0.1, 0.2, 0.5]", None),  # three numbers
        ("(0.1, 0.2, 0.5, 0.6)", None),  # not in brackets
    ],
)
def test_parse_box(text: str, expected: tuple | None) -> None:
    assert parse_box(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Overlap: [0,0,2,2] and [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),
        # Disjoint.
        ((0, 0, 1, 1), (2, 2, 3, 3), 0.0),
        # Touching edges only: zero-area intersection.
        ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),
        # Identical.
        ((0.1, 0.2, 0.4, 0.8), (0.1, 0.2, 0.4, 0.8), 1.0),
        # Nested: [1,1,2,2] inside [0,0,4,4]: 1 / 16.
        ((0, 0, 4, 4), (1, 1, 2, 2), 1 / 16),
        # Degenerate (zero width) has IoU 0, also with itself.
        ((1, 1, 1, 3), (0, 0, 4, 4), 0.0),
        ((1, 1, 1, 3), (1, 1, 1, 3), 0.0),
        # Half overlap along x: [0,0,2,1] and [1,0,3,1]: 1 / (2 + 2 - 1) = 1/3.
        ((0, 0, 2, 1), (1, 0, 3, 1), 1 / 3),
    ],
)
def test_box_iou_hand_computed(a: tuple, b: tuple, expected: float) -> None:
    # Prepare / Execute
    iou = box_iou(a, b)

    # Assert: symmetric too.
    assert iou == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


def test_swapped_corners_are_ordered() -> None:
    # Prepare: the same box with its corners given bottom-right first.
    swapped = to_unit_box((0.5, 0.6, 0.1, 0.2), "normalized", None)

    # Execute / Assert
    assert swapped == (0.1, 0.2, 0.5, 0.6)
    assert box_iou(swapped, to_unit_box((0.1, 0.2, 0.5, 0.6), "normalized", None)) == 1.0


def test_pixel_boxes_are_divided_by_the_image_size_and_clipped() -> None:
    # Prepare: a 200 x 100 image; the box runs past the right edge.
    box = to_unit_box((50, 25, 300, 75), "pixel", (200, 100))

    # Execute / Assert: x by 200, y by 100, x2 clipped to 1.
    assert box == pytest.approx((0.25, 0.25, 1.0, 0.75))


def test_pixel_without_an_image_size_is_refused() -> None:
    with pytest.raises(ValueError, match="needs the row's image size"):
        to_unit_box((0, 0, 1, 1), "pixel", None)


def _record(prediction: str, reference: str, **extra: object) -> dict:
    return {"prediction": prediction, "multiple_choice_answer": reference, "answers": [reference], **extra}


def test_summary_accuracy_mean_iou_and_unparsable() -> None:
    # Prepare: IoUs 1 (identical), 1/7 (overlap), 1/3 (half overlap), 0 (no box in the answer).
    records = [
        _record("[0.1, 0.1, 0.5, 0.5]", "[0.1, 0.1, 0.5, 0.5]", client_id=0),
        _record("box [0, 0, 0.2, 0.2]", "[0.1, 0.1, 0.3, 0.3]", client_id=0),
        _record("[0, 0, 0.2, 0.1]", "[0.1, 0, 0.3, 0.1]", client_id=1),
        _record("the cat on the left", "[0, 0, 1, 1]", client_id=1),
    ]

    # Execute
    summary = summarize_task(records, "grounding")

    # Assert: only IoU 1 reaches 0.5.
    assert summary["grounding_accuracy"] == pytest.approx(1 / 4)
    assert summary["mean_iou"] == pytest.approx((1 + 1 / 7 + 1 / 3 + 0) / 4)
    assert summary["unparsable"] == 1
    assert summary["by_client"][1] == {
        "n": 2,
        "grounding_accuracy": 0.0,
        "mean_iou": pytest.approx(1 / 6),
        "unparsable": 1,
    }


def test_iou_exactly_one_half_counts_as_correct() -> None:
    # Prepare: [0,0,1,1] vs [0,0,1,0.5]: intersection 0.5, union 1 -> IoU 0.5.
    records = [_record("[0, 0, 1, 1]", "[0, 0, 1, 0.5]")]

    # Execute / Assert
    assert metrics(records)["grounding_accuracy"] == 1.0


def test_pixel_format_uses_the_row_image() -> None:
    # Prepare: pixel boxes on a 100 x 50 image; the prediction reaches past the image, which
    # clipping removes: [50, 0, 150, 50] -> [0.5, 0, 1, 1] against [0.5, 0, 1, 1] -> IoU 1.
    image = Image.new("RGB", (100, 50))
    records = [_record("[50, 0, 150, 50]", "[50, 0, 100, 50]", image=image)]

    # Execute
    summary = summarize_task(records, "grounding", box_format="pixel")

    # Assert: clipped to the image, the boxes are identical.
    assert summary["mean_iou"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("records", "box_format", "fragment"),
    [
        ([_record("[0, 0, 1, 1]", "the whole image")], "normalized", "record 0 (0-based): reference 'the whole image'"),
        (
            [_record("[0, 0, 1, 1]", "[0, 0, 1, 1]")],
            "pixel",
            "record 0 (0-based): box_format 'pixel' needs the row's image",
        ),
    ],
)
def test_bad_records_name_the_record(records: list[dict], box_format: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        summarize_task(records, "grounding", box_format=box_format)
