"""Generation helpers: the task of a batch and classifier-free-guidance prompt dropout."""

from __future__ import annotations

import pytest

from fedumm.models.generation import PromptDropout, batch_task, row_task


def test_row_and_batch_tasks():
    assert row_task({"question": "what?"}) == "vqa"
    assert row_task({"task": "t2i"}) == "t2i"
    assert batch_task([{"task": "t2i"}, {"task": "t2i"}]) == "t2i"
    assert batch_task([{"question": "a"}, {"task": "vqa"}]) == "vqa"


def test_a_batch_mixing_tasks_is_refused_naming_both():
    with pytest.raises(ValueError, match="mixes tasks 't2i' and 'vqa'"):
        batch_task([{"task": "t2i"}, {"question": "what colour?"}])


def test_dropout_rate_matches_p_over_many_draws():
    # Prepare: 20,000 Bernoulli(0.1) draws; their mean has std sqrt(0.09 / 20000) = 0.0021.
    dropout = PromptDropout()
    dropout.start(seed=7, p=0.1)

    draws = [d for _ in range(1000) for d in dropout.draw(20)]

    # 0.01 is 4.7 standard deviations.
    assert abs(sum(draws) / len(draws) - 0.1) < 0.01


def test_dropout_is_seeded_and_off_outside_training():
    first, second, other = PromptDropout(), PromptDropout(), PromptDropout()
    assert first.draw(50) == [False] * 50  # not started: evaluation never drops a prompt
    first.start(3, 0.5)
    second.start(3, 0.5)
    other.start(4, 0.5)

    a = [first.draw(8) for _ in range(5)]
    b = [second.draw(8) for _ in range(5)]
    c = [other.draw(8) for _ in range(5)]

    assert a == b  # the same seed draws the same rows, step by step
    assert a != c
    first.stop()
    assert first.draw(50) == [False] * 50


def test_target_image_of_a_row():
    from PIL import Image

    from fedumm.errors import DataError
    from fedumm.models.generation import target_image

    red = Image.new("RGB", (8, 8), "red")
    assert target_image({"prompt": "a red square", "image": red}).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(DataError, match="text-to-image row 'a cat': needs exactly one target image, has 0"):
        target_image({"prompt": "a cat", "image": None})
    with pytest.raises(DataError, match="has 2"):
        target_image({"prompt": "a cat", "images": [red, red]})
    with pytest.raises(DataError, match="no 'prompt' text"):
        target_image({"image": red})
