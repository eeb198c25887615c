"""Worked examples for fedumm.metrics.caption and the caption summary."""

from __future__ import annotations

import math

import pytest

from fedumm.metrics import summarize_task
from fedumm.metrics.caption import bleu4, caption_tokens, cider_d, rouge_l


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("A dog, running.", "a dog running"), ("Don't  STOP!", "do n't stop"), ("", "")],
)
def test_caption_tokens(text: str, tokens: str) -> None:
    assert caption_tokens(text) == tokens


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("a man rides a horse", "a man rides a horse", 1.0),
        ("A man rides a horse.", "a man rides a horse", 1.0),  # tokenisation drops case and punctuation
        # All n-gram precisions 1, brevity penalty exp(1 - 6/5).
        ("a man rides a horse", "a man rides a horse today", math.exp(-0.2)),
        ("red apple on table", "blue sky with clouds", 0.0),
    ],
)
def test_bleu4_worked_examples(prediction: str, reference: str, expected: float) -> None:
    assert bleu4([prediction], [[reference]]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [
        # LCS "one three" = 2: P = 2/4, R = 2/3, F1 = 2PR/(P+R) = 4/7.
        (["one two three four"], [["one three five"]], 4 / 7),
        # The better of two references counts.
        (["one two three four"], [["one three five", "one two three four"]], 1.0),
        # Mean over captions: (4/7 + 1) / 2.
        (["one two three four", "x y"], [["one three five"], ["x y"]], (4 / 7 + 1) / 2),
        (["red apple"], [["blue sky"]], 0.0),
    ],
)
def test_rouge_l_worked_examples(predictions, references, expected: float) -> None:
    assert rouge_l(predictions, references) == pytest.approx(expected)


CAPTION_REFS = [
    ["a dog runs on the grass", "a brown dog running in a field"],
    ["a red car parked on a street", "a car on the road"],
    ["two birds sit on a wire", "birds perched on a power line"],
]


def test_cider_d_prefers_the_matching_caption() -> None:
    # Prepare
    matching = ["a dog runs on the grass", "a red car parked on a street", "two birds sit on a wire"]
    swapped = ["a red car parked on a street", "a dog runs on the grass", "two birds sit on a wire"]
    # Execute
    good, bad = cider_d(matching, CAPTION_REFS), cider_d(swapped, CAPTION_REFS)
    # Assert: the swapped captions only keep the third image's score (a third of the matching corpus's at most).
    assert good > 1.0
    assert bad < good / 2


def test_cider_d_of_one_caption_is_zero() -> None:
    # With one image every n-gram has document frequency 1 = the corpus size, so IDF is 0.
    assert cider_d(["a dog runs"], [["a dog runs"]]) == 0.0


@pytest.mark.parametrize("metric", [bleu4, rouge_l, cider_d])
def test_caption_metrics_reject_missing_references(metric) -> None:
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        metric(["a", "b"], [["a"], []])


def test_summarize_caption_uses_answers_as_references() -> None:
    # Prepare
    records = [{"prediction": refs[0], "answers": refs, "client_id": i % 2} for i, refs in enumerate(CAPTION_REFS)]
    # Execute
    summary = summarize_task(records, "caption")
    # Assert
    assert summary["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert summary["rouge_l"] == pytest.approx(1.0)
    assert summary["cider_d"] > 1.0
    assert [g["n"] for g in summary["by_client"].values()] == [2, 1]
