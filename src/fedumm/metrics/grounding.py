"""Visual grounding: boxes parsed from answer text, accuracy at IoU >= 0.5 and mean IoU.

A grounding answer names one box as ``[x1, y1, x2, y2]`` in its text (the first such group
of four numbers counts; anything around it is ignored). ``eval.box_format`` says how both the
prediction and the reference are written:

- ``normalized``: fractions of the image width and height, in [0, 1];
- ``pixel``: pixels of the row's image (its ``image``'s ``size``, width x height), divided
  by that size to give normalised coordinates.

Corners may come in either order (a box is the span of its two corners); boxes are clipped
to the image, [0, 1] x [0, 1]. IoU is the area of the intersection over the area of the
union (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge"); a box
with zero area has IoU 0 with everything, itself included. A prediction counts as correct at
IoU >= 0.5, the referring-expression convention (Kazemzadeh et al. 2014, "ReferItGame";
Mao et al. 2016, "Generation and Comprehension of Unambiguous Object Descriptions").
Unparsable predictions score IoU 0 and are counted; an unparsable reference is a data error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fedumm.metrics.base import MetricOptions, field

__all__ = ["BOX_FORMATS", "IOU_THRESHOLD", "box_iou", "metrics", "parse_box", "to_unit_box"]

#: The values of ``eval.box_format``.
BOX_FORMATS = ("normalized", "pixel")
#: IoU at or above which a predicted box counts as correct.
IOU_THRESHOLD = 0.5

Box = tuple[float, float, float, float]

_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def parse_box(text: str) -> Box | None:
    """The first ``[x1, y1, x2, y2]`` in ``text`` as four floats; None when there is none."""
    match = _BOX.search(text)
    if match is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in match.groups())
    return x1, y1, x2, y2


def to_unit_box(box: Box, box_format: str, image_size: tuple[int, int] | None) -> Box:
    """``box`` in normalised coordinates, corners ordered (x1 <= x2, y1 <= y2), clipped to [0, 1].

    ``pixel`` boxes are divided by ``image_size`` (width, height).

    Raises:
        ValueError: for an unknown format, or ``pixel`` without a positive image size.
    """
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {', '.join(BOX_FORMATS)}; got {box_format!r}")
    x1, y1, x2, y2 = box
    if box_format == "pixel":
        if image_size is None or min(image_size) <= 0:
            raise ValueError(f"box_format 'pixel' needs the row's image size; got {image_size!r}")
        width, height = image_size
        x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height

    def clip(v: float) -> float:
        return min(1.0, max(0.0, v))

    return clip(min(x1, x2)), clip(min(y1, y2)), clip(max(x1, x2)), clip(max(y1, y2))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ordered boxes (x1 <= x2, y1 <= y2); 0 when either has no area."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, inter_w) * max(0.0, inter_h)
    return inter / (area_a + area_b - inter)


def _image_size(record: Mapping) -> tuple[int, int] | None:
    # An ImageRef (fedumm.data.images) or a PIL image: both carry (width, height) as ``size``.
    size = getattr(record.get("image"), "size", None)
    return (int(size[0]), int(size[1])) if size is not None else None


def metrics(records: Sequence[Mapping], options: MetricOptions | None = None) -> dict[str, Any]:
    """The grounding task's metrics of one group: ``{"grounding_accuracy", "mean_iou", "unparsable"}``.

    Records hold "prediction" and the reference box as text in "multiple_choice_answer" (or
    "answers", first item); with ``box_format: pixel`` also "image" (its size).
    ``unparsable`` counts the predictions without a box.

    Raises:
        ValueError: if a reference has no box, or a pixel-format record has no image.
    """
    box_format = (options or MetricOptions()).box_format
    predictions = [str(p) for p in field(records, "prediction")]
    references = [r.get("multiple_choice_answer") or (r.get("answers") or [""])[0] for r in records]
    ious: list[float] = []
    unparsable = 0
    for i, (record, prediction, reference) in enumerate(zip(records, predictions, references)):
        size = _image_size(record) if box_format == "pixel" else None
        truth = parse_box(str(reference))
        if truth is None:
            raise ValueError(f"record {i} (0-based): reference {reference!r} holds no [x1, y1, x2, y2] box")
        if box_format == "pixel" and size is None:
            raise ValueError(f"record {i} (0-based): box_format 'pixel' needs the row's image (for its size)")
        predicted = parse_box(prediction)
        if predicted is None:
            unparsable += 1
            ious.append(0.0)
            continue
        ious.append(box_iou(to_unit_box(predicted, box_format, size), to_unit_box(truth, box_format, size)))
    n = len(ious)
    return {
        "grounding_accuracy": sum(iou >= IOU_THRESHOLD for iou in ious) / n if n else 0.0,
        "mean_iou": sum(ious) / n if n else 0.0,
        "unparsable": unparsable,
    }
