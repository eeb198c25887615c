"""Fixtures for the data tests: tiny image files and tables written into tmp_path."""

from __future__ import annotations

import json
import struct
import zlib
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


@pytest.fixture()
def write_blank_png() -> Callable[[Path, int, int], Path]:
    """Write a valid all-black 1-bit PNG of width x height, built row by row without ever holding
    the image in memory: a 20000 x 20000 one (400 megapixels, 1.6 GB as RGB) is a file of about
    50 KB, i.e. a decompression bomb."""
    return _write_blank_png


def _write_blank_png(path: Path, width: int, height: int) -> Path:
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    chunks = [packer.compress(row) for _ in range(height)]
    idat = b"".join(chunks) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale, no interlace
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
