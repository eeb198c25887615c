"""The preprocessing cache: every row through the processor once per run, batches identical to
the backend's own, the cache bounded in bytes, and a backend whose batches differ left alone."""

from __future__ import annotations

import pytest
import torch

from fedumm.config import ModelConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.federation import ModelHost
from fedumm.models.batch_cache import BatchCache, collate, same_batch
from fedumm.models.registry import get_backend
from fedumm.models.tiny import resolve_model_path
from fedumm.types import IGNORE_INDEX
from fedumm.validation import load_run_config


def _rows(n: int, seed: int = 0) -> list[dict]:
    return make_synthetic_vqa(n, seed=seed, image_size=16)


@pytest.mark.parametrize("backend_name, tiny", [("hf_vlm", "tiny-llava"), ("blip_vqa", "tiny-blip-vqa")])
def test_batches_assembled_from_rows_equal_the_backends_own(backend_name, tiny):
    # Prepare: rows whose questions and answers differ in length, so padding matters.
    backend = get_backend(backend_name)(
        ModelConfig(backend=backend_name, name_or_path=resolve_model_path(tiny), device="cpu")
    )
    backend.load()
    rows = _rows(6)
    assert len({len(r["question"]) for r in rows}) > 1
    pad = backend.processor.tokenizer.pad_token_id
    # Execute
    assembled = collate([backend.training_batch([r]) for r in rows], pad)
    # Assert
    assert same_batch(assembled, backend.training_batch(rows))


def test_collate_pads_ids_labels_and_masks_by_hand():
    # Prepare: two one-row batches of widths 3 and 1, plus a per-row pixel tensor.
    a = {
        "input_ids": torch.tensor([[5, 6, 7]]),
        "attention_mask": torch.tensor([[1, 1, 1]]),
        "labels": torch.tensor([[-100, 6, 7]]),
        "pixel_values": torch.ones(1, 2),
    }
    b = {
        "input_ids": torch.tensor([[9]]),
        "attention_mask": torch.tensor([[1]]),
        "labels": torch.tensor([[9]]),
        "pixel_values": torch.zeros(1, 2),
    }
    # Execute
    out = collate([a, b], pad_id=2)
    # Assert
    assert out["input_ids"].tolist() == [[5, 6, 7], [9, 2, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert out["pixel_values"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_the_processor_sees_each_row_once_across_epochs_and_rounds_and_training_is_unchanged(tmp_path, tiny_llava_path):
    # Prepare: two hosts on the same config, one with the cache off.
    overrides = [
        f"model.name_or_path={tiny_llava_path}",
        "model.device=cpu",
        f"output.dir={tmp_path}",
        "train.batch_size=4",
        "train.local_epochs=3",
        "adapter.dropout=0",
    ]
    cached = ModelHost(load_run_config(None, overrides))
    plain = ModelHost(load_run_config(None, [*overrides, "train.preprocess_cache_mb=0"]))
    rows = _rows(10)
    seen: list[int] = []
    build = cached.backend.training_batch

    def counting(batch_rows):
        if len(batch_rows) == 1:
            seen.append(id(batch_rows[0]))
        return build(batch_rows)

    cached.batches.build = counting
    # Execute: two rounds of three epochs each on both hosts.
    for seed in (1, 2):
        results = [h.train(rows, h.config.train, seed, None, False, "test") for h in (cached, plain)]
    # Assert: each of the 10 rows was preprocessed once over 6 epochs; the results are the same.
    assert sorted(seen) == sorted(id(r) for r in rows)
    assert cached.batches.misses == 10 and cached.batches.hits == 6 * 10 - 10
    assert results[0].mean_loss == results[1].mean_loss
    for key, value in cached.get_state().items():
        assert torch.equal(value, plain.get_state()[key])


def test_the_cache_stays_under_its_byte_limit_and_evicts_the_least_recently_used():
    # Prepare: each row's batch holds 8 float32 values = 32 bytes; room for two rows.
    def build(rows):
        return {
            "pixel_values": torch.tensor([[float(r["v"])] * 8 for r in rows]),
            "input_ids": torch.zeros(len(rows), 1, dtype=torch.long),
        }

    rows = [{"v": i} for i in range(3)]
    cache = BatchCache(build, pad_id=0, limit_bytes=2 * (32 + 8))
    # Execute
    cache.batch(rows[:2])
    cache.batch([rows[0]])  # row 0 is now the most recent
    cache.batch([rows[2]])  # evicts row 1
    # Assert
    assert cache.bytes <= cache.limit_bytes
    assert [entry[0]["v"] for entry in cache.entries.values()] == [0, 2]
    assert cache.batch([rows[1]])["pixel_values"].tolist() == [[1.0] * 8]
    assert cache.misses == 4


def test_a_backend_whose_batches_depend_on_the_batch_is_not_cached():
    # Prepare: a batch that records its own size cannot be assembled from single rows.
    def build(rows):
        return {"input_ids": torch.zeros(len(rows), 2, dtype=torch.long), "size": torch.full((len(rows), 1), len(rows))}

    cache = BatchCache(build, pad_id=0, limit_bytes=1 << 20, name="odd")
    # Execute
    with pytest.warns(UserWarning, match="train.preprocess_cache_mb: odd batches"):
        first = cache.batch([{}, {}])
    # Assert: the direct batch is used, now and after.
    assert first["size"].tolist() == [[2], [2]]
    assert not cache.enabled and not cache.entries
    assert cache.batch([{}, {}, {}])["size"].tolist() == [[3]] * 3


def test_rows_whose_tensors_do_not_stack_are_built_directly():
    # Prepare: per-row pixel tensors of 2 and 3 patches (LLaVA-NeXT pads them per batch).
    calls = []

    def build(rows):
        calls.append(len(rows))
        patches = max(r["patches"] for r in rows)
        return {
            "input_ids": torch.ones(len(rows), 2, dtype=torch.long),
            "pixel_values": torch.zeros(len(rows), patches, 4),
        }

    cache = BatchCache(build, pad_id=0, limit_bytes=1 << 20)
    rows = [{"patches": 2}, {"patches": 3}]
    # Execute
    batch = cache.batch(rows)
    # Assert: the direct batch (2 rows padded to 3 patches), after the two single-row builds.
    assert tuple(batch["pixel_values"].shape) == (2, 3, 4)
    assert calls == [1, 1, 2]
    assert collate([build([r]) for r in rows], pad_id=0) is None
