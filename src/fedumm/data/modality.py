"""Modality heterogeneity across clients: samples or whole clients lose their image or their text.

Scenarios after FedMLLM (Xu et al. 2024, "FedMLLM: Federated Fine-tuning MLLM on Multimodal
Heterogeneity Data", arXiv:2411.14717), which studies clients whose data lack a modality.
The concrete sampling rules below are this package's reading of those scenarios:

- ``none``: every sample keeps image and text.
- ``missing``: each sample independently, with one uniform draw u: u < rate/2 drops the
  image, rate/2 <= u < rate drops the text, otherwise both stay. So each modality is
  missing with probability rate/2 and a sample never loses both (the draws are exclusive).
- ``single``: the first ``num_image_clients`` clients are image-only, the rest text-only
  (cross-modality clients; ``rate`` is not used).
- ``mix``: each client draws once, with the ``missing`` rule, whether it is image-only
  (prob. rate/2), text-only (rate/2) or keeps both (1 - rate).

What is left is adapted into a usable sample: without text the question becomes a generic
instruction (``missing_text_prompt``); without an image ``image`` is None (and ``images``
empty). A sample never ends with neither modality: a sample that already has no image keeps
its text. Every output row is a new dict whose ``metadata["modality"]`` is "image+text",
"image" or "text"; input rows are never modified.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Scenario = Literal["none", "missing", "single", "mix"]
SCENARIOS: tuple[str, ...] = ("none", "missing", "single", "mix")
BOTH, IMAGE_ONLY, TEXT_ONLY = "image+text", "image", "text"

# Separate random streams per scenario, so changing the scenario does not replay the
# partitioner's draws (which use the same run seed).
_STREAM_MISSING, _STREAM_MIX = 0x6D697373, 0x6D6978

_PROMPTS: dict[str, str] = {
    "classification": "Classify the image. Answer with the class label.",
    "caption": "Describe the image.",
}
_DEFAULT_PROMPT = "Answer the question about the image."


def missing_text_prompt(row: Mapping) -> str:
    """The instruction that replaces a missing question, by the row's ``task`` (default: VQA)."""
    return _PROMPTS.get(str(row.get("task", "")), _DEFAULT_PROMPT)


def modality_of(row: Mapping) -> str:
    """"image+text", "image" or "text": the tag set by this module, else what the row holds."""
    tagged = (row.get("metadata") or {}).get("modality")
    if tagged is not None:
        return str(tagged)
    has_image = row.get("image") is not None or bool(row.get("images"))
    has_text = bool(row.get("question"))
    if has_image and not has_text:
        return IMAGE_ONLY
    return BOTH if has_image else TEXT_ONLY


def _tagged(row: Mapping, modality: str, **changes: object) -> dict:
    """A new row dict with ``changes`` applied and ``metadata["modality"]`` set."""
    metadata = {**(row.get("metadata") or {}), "modality": modality}
    return {**row, **changes, "metadata": metadata}


def with_modality(row: Mapping, keep: str) -> dict:
    """A new row holding only the modality ``keep`` ("image+text", "image" or "text").

    Never removes the last modality: a row without an image keeps its text.
    """
    if keep not in (BOTH, IMAGE_ONLY, TEXT_ONLY):
        raise ValueError(f"keep must be {BOTH!r}, {IMAGE_ONLY!r} or {TEXT_ONLY!r}, got {keep!r}")
    has_image = row.get("image") is not None or bool(row.get("images"))
    if keep == IMAGE_ONLY and has_image:
        return _tagged(row, IMAGE_ONLY, question=missing_text_prompt(row))
    if keep == TEXT_ONLY or not has_image:
        changes: dict[str, object] = {"image": None}
        if "images" in row:
            changes["images"] = []
        return _tagged(row, TEXT_ONLY, **changes)
    return _tagged(row, BOTH)


def _draw(u: float, rate: float) -> str:
    """What one uniform draw keeps: u < rate/2 drops the image, rate/2 <= u < rate the text."""
    if u < rate / 2:
        return TEXT_ONLY  # the image is dropped
    if u < rate:
        return IMAGE_ONLY  # the text is dropped
    return BOTH


def _seed_words(seed: int) -> int:
    # SeedSequence wants non-negative entropy; fold any int seed into 64 bits.
    return seed % 2**64


def apply_modality_scenario(
    client_rows: Sequence[Sequence[Mapping]],
    scenario: Scenario,
    rate: float,
    num_image_clients: int,
    seed: int,
) -> list[list[dict]]:
    """New per-client rows with modalities removed as ``scenario`` says (see the module docstring).

    Deterministic per seed; a sample's draw in ``missing`` depends only on (seed, client,
    position), a client's draw in ``mix`` only on (seed, client index).

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
    if scenario == "none":
        return [[with_modality(row, BOTH) for row in rows] for rows in client_rows]
    if scenario == "single":
        return [
            [with_modality(row, IMAGE_ONLY if c < num_image_clients else TEXT_ONLY) for row in rows]
            for c, rows in enumerate(client_rows)
        ]
    if scenario == "mix":
        draws = np.random.default_rng([_seed_words(seed), _STREAM_MIX]).random(len(client_rows))
        return [[with_modality(row, _draw(u, rate)) for row in rows] for u, rows in zip(draws, client_rows)]
    out = []
    for c, rows in enumerate(client_rows):
        draws = np.random.default_rng([_seed_words(seed), _STREAM_MISSING, c]).random(len(rows))
        out.append([with_modality(row, _draw(u, rate)) for u, row in zip(draws, rows)])
    return out


def modality_counts(rows: Sequence[Mapping]) -> dict[str, int]:
    """How many rows are "image+text", "image" and "text" (all three keys, zeros included)."""
    counted = Counter(modality_of(row) for row in rows)
    return {m: counted.get(m, 0) for m in (BOTH, IMAGE_ONLY, TEXT_ONLY)}
