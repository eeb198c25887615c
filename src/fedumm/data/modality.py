"""Modality heterogeneity across clients: samples or whole clients lose their image or their text.

Scenarios of FedMLLM (Xu et al. 2024, "FedMLLM: Federated Fine-tuning MLLM on Multimodal
Heterogeneity Data", arXiv:2411.14717), with the sampling rules of its data generators
(``data_gen/gen_data_hateful_missing.py`` and ``gen_data_hateful_mix.py``):

- ``none``: every sample keeps image and text.
- ``missing`` (rate m): each sample drops its image with probability m and, independently,
  its text with probability m. So a modality is missing in a share m of the samples, and a
  share m² loses both. Like FedMLLM, such a sample is kept with neither: no image and, in
  place of the question, the task's bare instruction (FedMLLM: "Is the content hateful?").
- ``single``: the first ``num_image_clients`` clients are image-only, the rest text-only
  (cross-modality clients; ``rate`` is not used).
- ``mix`` (rate q): each client draws once, for each of its two modalities, whether it
  holds it, from Bernoulli(1 - q). A client that draws neither is not left empty: as in
  FedMLLM, each of its samples keeps either its image or its text, by a fair coin.

What is left is adapted into a usable sample (FedMLLM rewrites its prompt the same way):

- without text, the question becomes an instruction about the image (``image_only_prompt``):
  the configured one, else by task (the row's ``task`` column, else the run's ``eval.task``);
- without an image, ``image`` is None (and ``images`` empty) and the question keeps its
  words, except that references to both modalities are narrowed to the text
  ("... based on the text and image?" -> "... based on the text?");
- with neither, ``image`` is None and the question is ``no_modality_prompt``.

A sample that already has no image keeps its text when only the text is drawn away.
Every output row is a new dict whose ``metadata["modality"]`` is "image+text", "image",
"text" or "none"; input rows are never modified.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Scenario = Literal["none", "missing", "single", "mix"]
SCENARIOS: tuple[str, ...] = ("none", "missing", "single", "mix")
BOTH, IMAGE_ONLY, TEXT_ONLY, NEITHER = "image+text", "image", "text", "none"
MODALITIES: tuple[str, ...] = (BOTH, IMAGE_ONLY, TEXT_ONLY, NEITHER)

# Separate random streams per scenario, so changing the scenario does not replay the
# partitioner's draws (which use the same run seed).
_STREAM_MISSING, _STREAM_MIX, _STREAM_MIX_COIN = 0x6D697373, 0x6D6978, 0x636F696E

_IMAGE_ONLY_PROMPTS: dict[str, str] = {
    "vqa": "Answer the question about the image.",
    "classification": "Classify the image. Answer with the class label.",
    "caption": "Describe the image.",
}
_NO_MODALITY_PROMPTS: dict[str, str] = {
    "vqa": "Answer the question.",
    "classification": "Answer with the class label.",
    "caption": "Write a caption.",
}

# "text and image", "the image and the text", "image-text", ...: narrowed to "text" once the
# image is gone. Case-insensitive; the article before the pair is kept.
_BOTH_MODALITIES = re.compile(
    r"\b(?:(text|caption)\s*(?:and|&|/|-)\s*(?:the\s+)?(?:image|picture|photo)"
    r"|(?:image|picture|photo)\s*(?:and|&|/|-)\s*(?:the\s+)?(text|caption))\b",
    re.IGNORECASE,
)


def _task_of(row: Mapping, task: str | None) -> str:
    """The row's own task (multitask sources tag rows), else the run's task, else VQA."""
    own = row.get("task")
    if own in _IMAGE_ONLY_PROMPTS:
        return str(own)
    return task if task in _IMAGE_ONLY_PROMPTS else "vqa"


def missing_text_prompt(row: Mapping, task: str | None = None, prompt: str | None = None) -> str:
    """The question of a sample that lost its text: ``prompt`` if given, else by task."""
    return prompt if prompt is not None else _IMAGE_ONLY_PROMPTS[_task_of(row, task)]


def missing_both_prompt(row: Mapping, task: str | None = None, prompt: str | None = None) -> str:
    """The question of a sample that lost both modalities: ``prompt`` if given, else by task."""
    return prompt if prompt is not None else _NO_MODALITY_PROMPTS[_task_of(row, task)]


def text_only_question(question: str) -> str:
    """``question`` with references to text and image together narrowed to the text."""
    return _BOTH_MODALITIES.sub(lambda m: m.group(1) or m.group(2), question)


def _present(row: Mapping) -> str:
    """What the row holds, ignoring any tag."""
    has_text = bool(row.get("question"))
    if _has_image(row):
        return BOTH if has_text else IMAGE_ONLY
    return TEXT_ONLY if has_text else NEITHER


def modality_of(row: Mapping) -> str:
    """ "image+text", "image", "text" or "none": the tag set by this module, else what the row holds."""
    tagged = (row.get("metadata") or {}).get("modality")
    return str(tagged) if tagged is not None else _present(row)


def _has_image(row: Mapping) -> bool:
    return row.get("image") is not None or bool(row.get("images"))


def _tagged(row: Mapping, modality: str, **changes: object) -> dict:
    """A new row dict with ``changes`` applied and ``metadata["modality"]`` set."""
    metadata = {**(row.get("metadata") or {}), "modality": modality}
    return {**row, **changes, "metadata": metadata}


def _without_image(row: Mapping) -> dict[str, object]:
    changes: dict[str, object] = {"image": None}
    if "images" in row:
        changes["images"] = []
    return changes


def with_modality(
    row: Mapping,
    keep: str,
    *,
    task: str | None = None,
    image_only_prompt: str | None = None,
    no_modality_prompt: str | None = None,
) -> dict:
    """A new row holding only the modality ``keep`` ("image+text", "image", "text" or "none").

    ``task`` and the two prompts choose the replacement questions (module docstring). A row
    without an image keeps its text when ``keep`` is "image" (only the text was drawn away);
    a row whose text is to stay but which has no question becomes "none".
    """
    if keep not in MODALITIES:
        raise ValueError(f"keep must be one of {MODALITIES}, got {keep!r}")
    if keep == BOTH or (keep == IMAGE_ONLY and not _has_image(row)):
        return _tagged(row, _present(row))
    if keep == IMAGE_ONLY:
        return _tagged(row, IMAGE_ONLY, question=missing_text_prompt(row, task, image_only_prompt))
    question = str(row.get("question") or "")
    if keep == TEXT_ONLY and question:
        return _tagged(row, TEXT_ONLY, question=text_only_question(question), **_without_image(row))
    return _tagged(row, NEITHER, question=missing_both_prompt(row, task, no_modality_prompt), **_without_image(row))


def _missing_kind(drop_image: bool, drop_text: bool) -> str:
    if drop_image and drop_text:
        return NEITHER
    if drop_image:
        return TEXT_ONLY
    return IMAGE_ONLY if drop_text else BOTH


def _seed_words(seed: int) -> int:
    # SeedSequence wants non-negative entropy; fold any int seed into 64 bits.
    return seed % 2**64


def mix_presence(num_clients: int, rate: float, seed: int) -> np.ndarray:
    """(num_clients, 2) booleans: does client c hold [image, text]? Each is Bernoulli(1 - rate)."""
    return np.random.default_rng([_seed_words(seed), _STREAM_MIX]).random((num_clients, 2)) >= rate


def apply_modality_scenario(
    client_rows: Sequence[Sequence[Mapping]],
    scenario: Scenario,
    rate: float,
    num_image_clients: int,
    seed: int,
    *,
    task: str | None = None,
    image_only_prompt: str | None = None,
    no_modality_prompt: str | None = None,
) -> list[list[dict]]:
    """New per-client rows with modalities removed as ``scenario`` says (see the module docstring).

    Deterministic per seed; a sample's draws in ``missing`` depend only on (seed, client,
    position), a client's draws in ``mix`` only on (seed, client index). ``task`` (the run's
    eval.task) picks the replacement prompts for rows without a ``task`` column.

    Raises:
        ValueError: if the scenario is unknown, rate is outside [0, 1], or num_image_clients
            is negative or more than the number of clients (scenario "single").
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if scenario == "single" and not 0 <= num_image_clients <= len(client_rows):
        raise ValueError(
            f"num_image_clients must be in 0..{len(client_rows)} (the number of clients), got {num_image_clients}"
        )
    prompts = {"task": task, "image_only_prompt": image_only_prompt, "no_modality_prompt": no_modality_prompt}
    if scenario == "none":
        return [[with_modality(row, BOTH, **prompts) for row in rows] for rows in client_rows]
    if scenario == "single":
        return [
            [with_modality(row, IMAGE_ONLY if c < num_image_clients else TEXT_ONLY, **prompts) for row in rows]
            for c, rows in enumerate(client_rows)
        ]
    out = []
    if scenario == "mix":
        presence = mix_presence(len(client_rows), rate, seed)
        for c, rows in enumerate(client_rows):
            image, text = bool(presence[c, 0]), bool(presence[c, 1])
            if image or text:
                kinds = [_missing_kind(not image, not text)] * len(rows)
            else:  # neither drawn: per sample, image or text by a fair coin (FedMLLM)
                coins = np.random.default_rng([_seed_words(seed), _STREAM_MIX_COIN, c]).random(len(rows))
                kinds = [IMAGE_ONLY if u < 0.5 else TEXT_ONLY for u in coins]
            out.append([with_modality(row, kind, **prompts) for kind, row in zip(kinds, rows)])
        return out
    for c, rows in enumerate(client_rows):
        # Column 0 drops the image, column 1 the text: two independent draws per sample.
        drops = np.random.default_rng([_seed_words(seed), _STREAM_MISSING, c]).random((len(rows), 2)) < rate
        out.append(
            [with_modality(row, _missing_kind(bool(d[0]), bool(d[1])), **prompts) for d, row in zip(drops, rows)]
        )
    return out


def modality_counts(rows: Sequence[Mapping]) -> dict[str, int]:
    """How many rows are "image+text", "image", "text" and "none" (all four keys, zeros included)."""
    counted = Counter(modality_of(row) for row in rows)
    return {m: counted.get(m, 0) for m in MODALITIES}
