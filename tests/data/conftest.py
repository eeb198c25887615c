"""Fixtures for the data tests: tiny image files and tables written into tmp_path."""

from __future__ import annotations

import json
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


@pytest.fixture()
def write_memes() -> Callable[..., None]:
    """Write n Hateful-Memes-style table rows (fedumm columns) and their images: one image each,
    'is this meme hateful?', yes for every third meme, sites s0/s1 alternating."""

    def write(path: Path, image_dir: Path, n: int, offset: int = 0) -> None:
        image_dir.mkdir(exist_ok=True)
        lines = []
        for i in range(offset, offset + n):
            Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(image_dir / f"{i}.png")
            answer = "yes" if i % 3 == 0 else "no"
            lines.append(
                json.dumps(
                    {
                        "image": f"img/{i}.png",
                        "question": "is this meme hateful?",
                        "answer": answer,
                        "label": int(answer == "yes"),
                        "task": "classification",
                        "site": f"s{i % 2}",
                    }
                )
            )
        path.write_text("\n".join(lines) + "\n")

    return write
