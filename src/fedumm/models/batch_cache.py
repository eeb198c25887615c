"""Each training row is preprocessed once per run: the processor's output for a row (image
pixels, prompt and answer tokens, labels) is kept in a least-recently-used cache bounded in
bytes (``train.preprocess_cache_mb``), and a micro-batch is assembled from its rows' entries by
padding the token tensors on the right and stacking the rest, as the backend's own batch
layout does (``Backend.training_batch`` pads its training batches on the right).

Whether a backend's batches come out the same both ways is checked on the first batch of each
cache (the direct batch is built once beside the assembled one); where they differ (a family
whose processor lays a batch out differently from its rows), the cache turns itself off and the
backend builds every batch as before.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fedumm.types import IGNORE_INDEX

#: Pad value of each right-padded per-token key; any other per-token key pads with 0.
PAD_VALUES = {"labels": IGNORE_INDEX, "attention_mask": 0, "decoder_attention_mask": 0}
#: Keys padded with the tokenizer's pad id.
ID_KEYS = ("input_ids", "decoder_input_ids")

Batch = dict[str, Any]


def _nbytes(batch: Batch) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))


def _token_keys(batch: Batch) -> list[str]:
    """The per-token keys of a one-row batch: 2-D tensors whose width is the sequence's (input
    ids' or decoder ids')."""
    widths = {batch[k].shape[-1] for k in ID_KEYS if k in batch}
    return [
        k for k, v in batch.items() if torch.is_tensor(v) and v.dim() == 2 and v.shape[0] == 1 and v.shape[1] in widths
    ]


def collate(rows: Sequence[Batch], pad_id: int) -> Batch | None:
    """One batch from one-row batches: per-token tensors right-padded to the longest row (input
    ids with ``pad_id``, labels with -100, masks and the rest with 0); every other tensor
    concatenated along its first dimension. None where rows disagree on such a tensor's other
    dimensions (LLaVA-NeXT's image patch counts, which its processor pads per batch)."""
    first = rows[0]
    for key, value in first.items():
        if torch.is_tensor(value) and any(row[key].shape[1:] != value.shape[1:] for row in rows):
            if key not in _token_keys(first):
                return None
    token_keys = set(_token_keys(first))
    out: Batch = {}
    for key, value in first.items():
        parts = [row[key] for row in rows]
        if key in token_keys:
            width = max(p.shape[1] for p in parts)
            fill = pad_id if key in ID_KEYS else PAD_VALUES.get(key, 0)
            padded = torch.full((len(parts), width), fill, dtype=value.dtype)
            for i, part in enumerate(parts):
                padded[i, : part.shape[1]] = part[0]
            out[key] = padded
        elif torch.is_tensor(value):
            out[key] = torch.cat(parts, dim=0)
        else:
            out[key] = value
    return out


def same_batch(a: Batch, b: Batch) -> bool:
    if set(a) != set(b):
        return False
    for key, value in a.items():
        other = b[key]
        if torch.is_tensor(value) != torch.is_tensor(other):
            return False
        if torch.is_tensor(value):
            if value.shape != other.shape or value.dtype != other.dtype or not torch.equal(value, other):
                return False
        elif value != other:
            return False
    return True


class BatchCache:
    """Training batches from cached per-row processor outputs (see the module docstring).

    ``build`` is the backend's ``training_batch``; ``limit_bytes`` bounds the cached tensors
    (0: no cache, every batch is built directly). A row's entry is found by identity (the row
    dicts a client holds live for the whole run) and holds the row itself, so an entry can never
    answer for a different row that reuses a freed object's id."""

    def __init__(self, build: Callable[[Sequence[dict]], Batch], pad_id: int, limit_bytes: int, name: str = "backend"):
        self.build, self.pad_id, self.limit_bytes, self.name = build, pad_id, limit_bytes, name
        self.entries: OrderedDict[int, tuple[dict, Batch, int]] = OrderedDict()
        self.bytes = 0
        self.checked = False
        self.enabled = limit_bytes > 0
        self.hits = self.misses = 0

    def _row(self, row: dict) -> Batch:
        key = id(row)
        entry = self.entries.get(key)
        if entry is not None and entry[0] is row:
            self.entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        batch = self.build([row])
        size = _nbytes(batch)
        if size <= self.limit_bytes:
            if entry is not None:  # a stale entry under a reused id
                self.bytes -= self.entries.pop(key)[2]
            self.entries[key] = (row, batch, size)
            self.bytes += size
            while self.bytes > self.limit_bytes:
                self.bytes -= self.entries.popitem(last=False)[1][2]
        return batch

    def batch(self, rows: Sequence[dict]) -> Batch:
        """The training batch of ``rows``: assembled from the cache, or built directly when the
        cache is off."""
        if not self.enabled:
            return self.build(rows)
        assembled = collate([self._row(r) for r in rows], self.pad_id)
        if assembled is None:  # rows whose tensors cannot be stacked: this batch as the backend builds it
            return self.build(rows)
        if not self.checked:
            self.checked = True
            direct = self.build(rows)
            if not same_batch(assembled, direct):
                self.enabled = False
                self.entries.clear()
                self.bytes = 0
                warnings.warn(
                    f"train.preprocess_cache_mb: {self.name} batches assembled from single rows differ from its "
                    "own batches; every batch is preprocessed directly",
                    stacklevel=2,
                )
                return direct
        return assembled
