"""A GenEval-style checker for images of coloured shapes on black, and GenEval's summary.

GenEval (Ghosh, Hajishirzi & Schmidt 2023, "GenEval: An Object-Focused Framework for
Evaluating Text-to-Image Alignment", arXiv:2310.11513) scores a generated image against its
prompt's metadata ``{"tag", "include": [{"class", "count", "color"?, "position"?}],
"exclude"?: [{"class", "count"}]}`` with an object detector; here the "detector" is plain
geometry, which is exact on the synthetic scenes (``fedumm.data.synthetic``):

1. **Find objects.** A pixel is foreground when its brightest channel exceeds
   ``foreground`` (the background is black); objects are the connected components
   (8-connectivity, ``scipy.ndimage.label``) of the foreground, each cut back to its
   half-maximum contour (pixels at least half as bright as its 90th percentile), which blur
   moves little and which reopens gaps that blur or JPEG bridged. An object's colour is
   the palette colour closest in RGB direction (cosine similarity, so dim edges keep their
   hue) to its mean pixel (JPEG keeps block means while single pixels scatter between
   neighbouring hues); below ``min_cosine`` it has none (greys, whites). A component whose
   pixels split between colours that lie apart (each holding at least ``split_share`` of it,
   their centres at least 0.35 of its extent apart: two touching shapes) is split by colour.
   Components smaller than ``min_area`` (a fraction of the image) are noise.
2. **Name their shapes** from the object mask in its bounding box: a triangle (apex up or
   down) has most of its area in one half (|bottom - top| / area > 0.25; 0.5 for an ideal
   triangle); otherwise the fill ratio (area / box area) tells a square (>= 0.88; 1 ideal)
   from a circle (>= 0.6; pi/4 ideal). Lower fill, or a box more than twice as long as it is
   wide, is no shape: the object counts for no class.
3. **Score the prompt as GenEval's evaluator does.** Objects of a class are ranked largest
   first (GenEval ranks by detector confidence). Each ``include`` clause takes the first
   ``count`` objects of its class: fewer is wrong ("at least count"); with ``color`` all of
   them must have it; with ``position: [relation, k]`` each must stand in ``relation`` to
   every object matched by clause ``k`` (which must itself have matched). Each ``exclude``
   clause is violated by ``count`` or more objects of its class (counting prompts exclude
   count + 1, which makes the count exact). The image is correct when every clause holds.
   Relations follow GenEval: with box centres c and sizes d, the offset c_a - c_b shrinks
   by 0.1 * (d_a + d_b) per axis (towards 0, not past it) and is divided by the norm of the
   original offset; "left of" is x < -0.5, "right of" x > 0.5, "above" y < -0.5, "below"
   y > 0.5 (image y grows downwards); an offset that shrinks to 0 has no relation.

``summarize`` follows GenEval's ``summary_scores.py``: the score of a tag is the share of its
images that are correct, and the overall score is the plain mean of the tag scores (every
tag weighs the same, whatever its number of prompts).

The palette is an argument (the synthetic task's is ``fedumm.data.synthetic.COLORS``), and
only the three synthetic shapes are classes; metadata naming another class or colour cannot
be checked here (score real images with GenEval's own evaluator, see
``fedumm.data.geneval.write_geneval_layout``). In a run, such rows (and rows without
metadata: a user's prompt/image pairs) are still evaluated: their images are drawn and saved,
their teacher-forced image-token metrics and CLIPScore computed, but their record's
``correct`` is None and the GenEval scores cover the checkable rows only (``geneval_checked``:
how many images were checked). ``eval.t2i_metric`` picks the run's primary metric among
``T2I_METRICS``; ``t2i_metric_problem`` says when the rows cannot produce it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from fedumm.errors import DataError

__all__ = [
    "CHECKABLE_SHAPES",
    "GENEVAL_TAGS",
    "RELATIONS",
    "T2I_METRICS",
    "CheckResult",
    "DetectedObject",
    "ImageEvalHost",
    "check_image",
    "detect_objects",
    "evaluate_t2i",
    "geneval_records",
    "metrics",
    "relations",
    "score_objects",
    "shape_of",
    "summarize",
    "t2i_metric_problem",
    "t2i_records",
    "unchecked_reason",
]

#: GenEval's six task tags, in its order.
GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
#: The relations of GenEval's position prompts.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: The classes the geometry can name.
CHECKABLE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: The primary metrics a text-to-image run may take (``eval.t2i_metric``), the default first.
T2I_METRICS: tuple[str, ...] = ("geneval_overall", "image_token_accuracy", "clip_score")

# GenEval's evaluator: offsets shrink by this share of the two objects' sizes before the direction test.
POSITION_THRESHOLD = 0.1
_TRIANGLE_ASYMMETRY = 0.25
_SQUARE_FILL = 0.88
_CIRCLE_FILL = 0.6
_MAX_ASPECT = 2.0


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image: its shape (None: no recognisable shape), colour, pixel
    count and box ``(x0, y0, x1, y1)`` (x1, y1 exclusive, so x1 - x0 is the width)."""

    shape: str | None
    color: str | None
    area: int
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one image: correct, why not (one line per failed clause), what was found."""

    correct: bool
    reason: str
    objects: tuple[DetectedObject, ...]


def shape_of(mask: np.ndarray) -> str | None:
    """The shape of a boolean object mask (cropped or not): triangle, square, circle or None."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = crop.shape
    if max(height, width) > _MAX_ASPECT * min(height, width):
        return None
    area = float(crop.sum())
    half = height // 2
    # The middle row of an odd height belongs to neither half.
    asymmetry = (float(crop[height - half :].sum()) - float(crop[:half].sum())) / area
    if abs(asymmetry) > _TRIANGLE_ASYMMETRY:
        return "triangle"
    fill = area / (height * width)
    if fill >= _SQUARE_FILL:
        return "square"
    if fill >= _CIRCLE_FILL:
        return "circle"
    return None


def _palette_arrays(palette: Mapping[str, Sequence[int]]) -> tuple[list[str], np.ndarray]:
    if not palette:
        raise ValueError("palette is empty; give at least one colour name -> (r, g, b)")
    names = list(palette)
    rgb = np.asarray([palette[n] for n in names], dtype=np.float64)
    if rgb.shape != (len(names), 3) or (np.linalg.norm(rgb, axis=1) == 0).any():
        raise ValueError(f"palette: every colour must be a non-black (r, g, b) triple, got {dict(palette)}")
    return names, rgb / np.linalg.norm(rgb, axis=1, keepdims=True)


def _object(part: np.ndarray, offset: tuple[int, int], color: str | None) -> DetectedObject:
    """The object of a boolean mask ``part`` (in a crop at ``offset`` = (y, x)), named by its shape."""
    ys, xs = np.nonzero(part)
    y0, x0 = offset[0] + int(ys.min()), offset[1] + int(xs.min())
    box = (x0, y0, offset[1] + int(xs.max()) + 1, offset[0] + int(ys.max()) + 1)
    return DetectedObject(shape_of(part), color, int(part.sum()), box)


def detect_objects(
    image: Image.Image,
    palette: Mapping[str, Sequence[int]],
    *,
    foreground: int = 64,
    min_cosine: float = 0.9,
    min_area: float = 0.008,
    split_share: float = 0.25,
) -> list[DetectedObject]:
    """The objects of ``image`` (coloured shapes on black), largest first (ties: top, then left).

    ``foreground``: brightest-channel value above which a pixel belongs to an object;
    ``min_cosine``: least cosine similarity between a colour and its palette colour's RGB
    direction (below: no colour); ``min_area``: least object size as a fraction of the
    image's pixels; ``split_share``: least share of a component's pixels a second colour
    needs to make it two objects (when the colours also lie apart, see the module).
    """
    from scipy import ndimage

    names, directions = _palette_arrays(palette)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width, _ = pixels.shape
    brightness = pixels.max(axis=2)
    least = max(1, int(np.ceil(min_area * height * width)))
    eight = np.ones((3, 3), dtype=bool)

    def nearest(rgb: np.ndarray) -> np.ndarray:
        """(cosine, palette index) of each row of ``rgb``."""
        cosine = rgb @ directions.T / np.maximum(np.linalg.norm(rgb, axis=-1), 1e-9)[..., None]
        return np.stack([cosine.max(axis=-1), cosine.argmax(axis=-1)], axis=-1)

    components, _ = ndimage.label(brightness > foreground, structure=eight)
    found: list[DetectedObject] = []
    for index, where in enumerate(ndimage.find_objects(components), start=1):
        component = components[where] == index
        if component.sum() < least:
            continue
        crop, light, offset = pixels[where], brightness[where], (where[0].start, where[1].start)
        match = nearest(crop[component])
        labelled = match[:, 0] >= min_cosine
        kinds = match[labelled, 1].astype(int)
        shares = np.bincount(kinds, minlength=len(names)) / max(1, component.sum())
        strong = [int(k) for k in np.argsort(-shares) if shares[k] >= split_share]
        ys, xs = np.nonzero(component)
        centres = {k: (ys[labelled][kinds == k].mean(), xs[labelled][kinds == k].mean()) for k in strong}
        reach = 0.35 * max(component.shape)
        apart = (
            len(strong) > 1
            and max(
                np.hypot(centres[a][0] - centres[b][0], centres[a][1] - centres[b][1]) for a in strong for b in strong
            )
            >= reach
        )
        # Shapes are read from the half-maximum contour (pixels at least half as bright as the
        # component's 90th percentile): blur widens the thresholded mask, but moves that contour
        # little and reopens the gap between shapes that blur or JPEG bridged.
        core = component & (light >= 0.5 * float(np.percentile(light[component], 90)))
        if apart:
            # Touching shapes of different colours: each colour's pixels, regrouped, are its own objects.
            local = np.full(component.shape, -1)
            local[ys[labelled], xs[labelled]] = kinds
            groups = [(local == k) & core for k in strong]
        else:
            groups = [core]
        for group in groups:
            pieces, n = ndimage.label(group, structure=eight)
            for p in range(1, n + 1):
                piece = pieces == p
                if piece.sum() < least:
                    continue
                # The colour of its mean pixel: JPEG keeps block means, while single pixels at the
                # edges scatter between neighbouring hues.
                cosine, k = nearest(crop[piece].mean(axis=0))
                found.append(_object(piece, offset, names[int(k)] if cosine >= min_cosine else None))
    return sorted(found, key=lambda o: (-o.area, o.box[1], o.box[0]))


def relations(a: DetectedObject, b: DetectedObject, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Where ``a`` stands relative to ``b``: a subset of ``RELATIONS`` (GenEval's rule, see the module)."""
    offset = np.subtract(a.center, b.center)
    slack = threshold * (np.asarray(a.size, dtype=np.float64) + np.asarray(b.size, dtype=np.float64))
    revised = np.maximum(np.abs(offset) - slack, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def _clauses(metadata: Mapping, key: str, palette_names: Sequence[str]) -> list[Mapping]:
    """The ``include`` or ``exclude`` clauses of ``metadata``, checked before any is scored."""
    clauses = metadata.get(key, [])
    if not isinstance(clauses, list) or not all(isinstance(c, Mapping) for c in clauses):
        raise ValueError(f"geneval metadata {key!r}: expected a list of objects, got {clauses!r}")
    for i, clause in enumerate(clauses):
        where = f"geneval metadata {key}[{i}]"
        if clause.get("class") not in CHECKABLE_SHAPES:
            raise ValueError(
                f"{where}: class {clause.get('class')!r} cannot be checked here "
                f"(classes: {', '.join(CHECKABLE_SHAPES)})"
            )
        count = clause.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}: count {count!r} must be an integer >= 1")
        color = clause.get("color")
        if color is not None and color not in palette_names:
            raise ValueError(f"{where}: colour {color!r} is not in the palette ({', '.join(palette_names)})")
        position = clause.get("position")
        if position is not None:
            relation, target = (
                (position[0], position[1])
                if isinstance(position, list | tuple) and len(position) == 2
                else (None, None)
            )
            if (
                relation not in RELATIONS
                or isinstance(target, bool)
                or not isinstance(target, int)
                or not 0 <= target < i
            ):
                raise ValueError(
                    f"{where}: position {position!r} must be [relation, index of an earlier include clause] "
                    f"with a relation among {RELATIONS}"
                )
    return clauses


def score_objects(objects: Sequence[DetectedObject], metadata: Mapping, palette_names: Sequence[str]) -> CheckResult:
    """GenEval's verdict on the detected ``objects`` (largest first) for a prompt's ``metadata``.

    Raises:
        ValueError: if the metadata names a class or colour the checker cannot see, or a
            position refers to a clause that does not come before it.
    """
    by_class: dict[str, list[DetectedObject]] = {}
    for obj in objects:
        if obj.shape is not None:
            by_class.setdefault(obj.shape, []).append(obj)
    reasons: list[str] = []
    matched: list[list[DetectedObject] | None] = []
    includes = _clauses(metadata, "include", palette_names)
    excludes = _clauses(metadata, "exclude", palette_names)
    for clause in includes:
        name, count = clause["class"], clause["count"]
        chosen = by_class.get(name, [])[:count]
        ok = len(chosen) >= count
        if not ok:
            reasons.append(f"expected {name}>={count}, found {len(chosen)}")
        color = clause.get("color")
        if ok and color is not None:
            right = sum(o.color == color for o in chosen)
            if right < count:
                ok = False
                colours = sorted({str(o.color) for o in chosen})
                seen = ", ".join(f"{sum(str(o.color) == c for o in chosen)} {c}" for c in colours)
                reasons.append(f"expected {color} {name}>={count}, found {right} {color}; and {seen}")
        position = clause.get("position")
        if ok and position is not None:
            relation, target = position[0], position[1]
            targets = matched[target]
            if targets is None:
                ok = False
                reasons.append(f"no target for {name} to be {relation}")
            else:
                wrong = [found for a in chosen for b in targets if relation not in (found := relations(a, b))]
                if wrong:
                    ok = False
                    reasons.append(f"expected {name} {relation} target, found {' and '.join(sorted(wrong[0]))} target")
        matched.append(chosen if ok else None)
    for clause in excludes:
        name, count = clause["class"], clause["count"]
        if len(by_class.get(name, [])) >= count:
            reasons.append(f"expected {name}<{count}, found {len(by_class[name])}")
    return CheckResult(not reasons, "\n".join(reasons), tuple(objects))


def check_image(
    image: Image.Image, metadata: Mapping, palette: Mapping[str, Sequence[int]], **detect: Any
) -> CheckResult:
    """Detect the objects of ``image`` and score them against ``metadata`` (see the module).

    ``detect``: keyword arguments of ``detect_objects`` (thresholds).
    """
    return score_objects(detect_objects(image, palette, **detect), metadata, list(palette))


def summarize(records: Sequence[Mapping]) -> dict[str, Any]:
    """GenEval's summary of per-image verdicts ``{"tag", "correct"}``.

    Returns:
        ``{"geneval_overall": mean of the tag scores, "geneval_<tag>": share of correct images
        of that tag (for each tag present), "geneval_images": share of correct images}``.

    Raises:
        ValueError: if there are no records or one lacks "tag" or "correct".
    """
    if not records:
        raise ValueError("geneval summary: no records")
    by_tag: dict[str, list[bool]] = {}
    for i, record in enumerate(records):
        if "tag" not in record or "correct" not in record:
            raise ValueError(f"record {i} (0-based) needs 'tag' and 'correct' (has {sorted(record)})")
        by_tag.setdefault(str(record["tag"]), []).append(bool(record["correct"]))
    order = sorted(by_tag, key=lambda t: (GENEVAL_TAGS.index(t) if t in GENEVAL_TAGS else len(GENEVAL_TAGS), t))
    scores = {f"geneval_{tag}": float(np.mean(by_tag[tag])) for tag in order}
    return {
        "geneval_overall": float(np.mean(list(scores.values()))),
        **scores,
        "geneval_images": float(np.mean([c for values in by_tag.values() for c in values])),
    }


def metrics(records: Sequence[Mapping], options: object = None) -> dict[str, Any]:
    """The t2i task's metrics of one group (``options`` unused): ``summarize`` of the checked
    records (``correct`` not None) with ``geneval_checked``, their number (no checked record: no
    ``geneval_*`` score), plus what the records carry (``t2i_records``):

    - ``clip_score``: the mean CLIPScore of records with "clip_score";
    - ``vq_ceiling`` and ``vq_ceiling_<tag>``: ``summarize`` of the verdicts on the VQ
      reconstructions of the targets (records with "vq_correct"), named like the score;
    - ``image_token_nll`` / ``image_token_accuracy``: the teacher-forced metrics over every image
      token of the records' rows (each row's value weighted by its "image_tokens"; a row with
      several samples counts once).
    """
    checked = [r for r in records if r.get("correct") is not None]
    out: dict[str, Any] = summarize(checked) if checked else {}
    out["geneval_checked"] = len(checked)
    scored = [float(r["clip_score"]) for r in records if r.get("clip_score") is not None]
    if scored:
        out["clip_score"] = float(np.mean(scored))
    ceiling = [{"tag": r["tag"], "correct": r["vq_correct"]} for r in records if r.get("vq_correct") is not None]
    if ceiling:
        out.update({k.replace("geneval_", "vq_ceiling_"): v for k, v in summarize(ceiling).items()})
        out["vq_ceiling"] = out.pop("vq_ceiling_overall")
        out.pop("vq_ceiling_images")
    tokens = [r for r in records if r.get("image_tokens") and r.get("sample", 0) == 0]
    if tokens:
        total = sum(int(r["image_tokens"]) for r in tokens)
        for key in ("image_token_nll", "image_token_accuracy"):
            out[key] = sum(float(r[key]) * int(r["image_tokens"]) for r in tokens) / total
    return out


def unchecked_reason(row: Mapping, palette_names: Sequence[str]) -> str | None:
    """Why the checker cannot score ``row`` (None: it can): no ``geneval`` metadata, or metadata
    naming a class or colour the geometry does not know (GenEval's own prompts: COCO classes)."""
    if "geneval" not in row:
        return "no 'geneval' metadata"
    try:
        _clauses(row["geneval"], "include", palette_names)
        _clauses(row["geneval"], "exclude", palette_names)
    except ValueError as exc:
        return str(exc)
    return None


def _has_target(row: Mapping) -> bool:
    return row.get("image") is not None or bool(row.get("images"))


def t2i_metric_problem(
    metric: str, rows: Sequence[Mapping], palette_names: Sequence[str], clip: bool, where: str = "test rows"
) -> str | None:
    """Why a run whose primary metric is ``metric`` (``eval.t2i_metric``) cannot score the
    text-to-image ``rows`` (``where`` names them), in one line; None when it can. ``clip``:
    eval.clip_model is set. No rows: None (nothing to score)."""
    if not rows:
        return None
    others = "set eval.t2i_metric to image_token_accuracy (rows with a target image) or clip_score (eval.clip_model)"
    if metric == "geneval_overall":
        reasons = [unchecked_reason(row, palette_names) for row in rows]
        if all(reasons):
            return (
                f"eval.t2i_metric: geneval_overall, but none of the {len(rows)} text-to-image {where} can be "
                f"checked (row 0: {reasons[0]}); {others}"
            )
    elif metric == "image_token_accuracy":
        if not any(_has_target(row) for row in rows):
            return (
                f"eval.t2i_metric: image_token_accuracy, but none of the {len(rows)} text-to-image {where} has a "
                "target image (GenEval's prompts have none); set eval.t2i_metric to geneval_overall or clip_score"
            )
    elif metric == "clip_score":
        if not clip:
            return "eval.t2i_metric: clip_score needs eval.clip_model (a CLIP checkpoint)"
    else:
        return f"eval.t2i_metric: {metric!r}; expected one of {', '.join(T2I_METRICS)}"
    return None


class ImageEvalHost(Protocol):
    """What the t2i task asks of the model host (``federation.host.ModelHost``)."""

    #: Colour name -> (r, g, b) of the checker (the synthetic scenes' palette).
    palette: Mapping[str, Sequence[int]]

    def t2i_images(self, rows: Sequence[Mapping], batch_size: int) -> list[Image.Image]:
        """One generated image per row's prompt (seeded; saved where the run asks)."""
        ...

    def reconstructions(self, rows: Sequence[Mapping]) -> list[Image.Image | None]:
        """The VQ encode-decode of each row's target image (None: the row has none)."""
        ...

    def row_image_token_metrics(self, rows: Sequence[Mapping]) -> list[dict | None]:
        """Each row's teacher-forced ``image_token_nll``, ``image_token_accuracy`` and ``tokens``
        (None: the row has no target image)."""
        ...

    def clip_scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float] | None:
        """The CLIPScore of each image against its prompt (None: eval.clip_model is off)."""
        ...


def t2i_records(task: Any, host: ImageEvalHost, rows: Sequence[Mapping], batch_size: int) -> list[dict[str, Any]]:
    """The t2i task's records (``Task.make_records``): one image generated per row and checked
    against its metadata where the checker can (``geneval_records``), plus, where the row has a
    target image, the checker's verdict on the target's VQ reconstruction (``vq_correct``, for
    checkable rows: the ceiling no model on this tokenizer can beat) and the row's teacher-forced
    image-token metrics (``image_token_nll``, ``image_token_accuracy``, ``image_tokens``).

    Raises:
        DataError: in one line naming eval.t2i_metric, when the rows cannot produce the task's
            primary metric (``t2i_metric_problem``), before anything is generated.
    """
    # clip_score without eval.clip_model is refused by the config; the host's None below says it too.
    clients = {row.get("client_id") for row in rows}
    where = f"test rows of client {clients.pop()}" if len(clients) == 1 and None not in clients else "test rows"
    problem = t2i_metric_problem(task.primary_metric, rows, list(host.palette), clip=True, where=where)
    if problem:
        raise DataError(problem)
    images = host.t2i_images(rows, batch_size)
    clips = host.clip_scores(images, [str(row["prompt"]) for row in rows])
    if clips is None and task.primary_metric == "clip_score":
        raise DataError("eval.t2i_metric: clip_score needs eval.clip_model (a CLIP checkpoint)")
    records = geneval_records(rows, images, host.palette, clips)
    reconstructed = host.reconstructions(rows)
    tokens = host.row_image_token_metrics(rows)
    for record, row, recon, token in zip(records, rows, reconstructed, tokens, strict=True):
        if recon is not None and record["correct"] is not None:
            record["vq_correct"] = check_image(recon, row["geneval"], host.palette).correct
        if token is not None:
            record["image_token_nll"] = float(token["image_token_nll"])
            record["image_token_accuracy"] = float(token["image_token_accuracy"])
            record["image_tokens"] = int(token["tokens"])
    return records


def geneval_records(
    rows: Sequence[Mapping],
    images: Sequence[Image.Image | Sequence[Image.Image]],
    palette: Mapping[str, Sequence[int]],
    clip_scores: Sequence[float | Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One verdict record per generated image: ``images[i]`` (an image, or a list of samples)
    belongs to ``rows[i]`` (a t2i row).

    Each record: ``tag`` (the metadata's, None without), ``correct`` (None: the row cannot be
    checked, ``unchecked_reason``), ``reason``, ``prompt``, ``row`` (0-based), ``sample``
    (0-based), ``client_id`` when the row has one, ``clip_score`` when ``clip_scores`` (shaped
    like ``images``) is given.

    Raises:
        ValueError: if the lengths differ.
    """
    if len(rows) != len(images) or (clip_scores is not None and len(clip_scores) != len(rows)):
        clip = "" if clip_scores is None else f", {len(clip_scores)} clip score lists"
        raise ValueError(f"geneval records: {len(rows)} rows, {len(images)} image lists{clip}")
    names = list(palette)
    records = []
    for i, (row, samples) in enumerate(zip(rows, images)):
        samples = [samples] if isinstance(samples, Image.Image) else list(samples)
        clips = None if clip_scores is None else clip_scores[i]
        clips = [clips] if isinstance(clips, (int, float)) else clips
        if clips is not None and len(clips) != len(samples):
            raise ValueError(
                f"geneval records: row {i} (0-based) has {len(samples)} images but {len(clips)} clip scores"
            )
        unchecked = unchecked_reason(row, names)
        metadata = row.get("geneval") or {}
        for k, image in enumerate(samples):
            result = None if unchecked else check_image(image, metadata, palette)
            record = {
                "tag": metadata.get("tag"),
                "correct": None if result is None else result.correct,
                "reason": f"not checked: {unchecked}" if result is None else result.reason,
                "prompt": row.get("prompt", metadata.get("prompt")),
                "row": i,
                "sample": k,
            }
            if "client_id" in row:
                record["client_id"] = row["client_id"]
            if clips is not None:
                record["clip_score"] = float(clips[k])
            records.append(record)
    return records


def evaluate_t2i(
    rows: Sequence[Mapping],
    images: Sequence[Image.Image | Sequence[Image.Image]],
    palette: Mapping[str, Sequence[int]],
    clip_scores: Sequence[float | Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Check every generated image and summarise as GenEval does (see ``geneval_records``,
    ``summarize``); the VQ ceiling is the same call on the reconstructed test images.

    Returns:
        ``{"task": "t2i", "n": images, "n_prompts": rows, "geneval_overall", "geneval_<tag>"...,
        "geneval_images", "clip_score"?, "records": the per-image records}``.
    """
    records = geneval_records(rows, images, palette, clip_scores)
    return {"task": "t2i", "n": len(records), "n_prompts": len(rows), **metrics(records), "records": records}
