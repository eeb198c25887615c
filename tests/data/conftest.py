"""Fixtures for the data tests: tiny image files written into tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image


def solid_image(rgb: tuple[int, int, int], size: int = 8) -> Image.Image:
    """A size x size image of one colour: its first pixel identifies it after a round trip."""
    return Image.new("RGB", (size, size), rgb)


@pytest.fixture()
def write_image(tmp_path: Path) -> Callable[..., str]:
    """Write a solid PNG under tmp_path/images and return its path relative to tmp_path."""

    def write(name: str, rgb: tuple[int, int, int] = (200, 10, 10)) -> str:
        path = tmp_path / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        solid_image(rgb).save(path)
        return f"images/{name}"

    return write
