"""Fixtures for the tiny-model tests: one user turn with an image, and a 32x32 image."""

from __future__ import annotations

import pytest


@pytest.fixture
def user_turn() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color?"}]}]


@pytest.fixture
def image():
    from PIL import Image

    return Image.new("RGB", (32, 32), "red")
