"""Tests for fedumm.data.images: the pixel limit checked from the header (decompression bombs), image
references decoded lazily through a bounded cache, and data.max_image_pixels through load_source."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from fedumm.data import images as images_module
from fedumm.data.config import DataConfig
from fedumm.data.federated import load_source
from fedumm.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageRef, as_pil, clear_cache, pixel_limit
from fedumm.data.rows import RowProblem, image_ref
from fedumm.data.sources.table import load_table
from fedumm.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def solid_image(rgb: tuple[int, int, int], size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def _table(tmp_path: Path, images: list[str]) -> Path:
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"image": name, "question": "what?", "answer": "x"}) for name in images]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image PIL decodes (ImageFile.load) while the test runs."""
    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self):
        if self.tile:  # pixels still to decode (convert calls load again afterwards)
            sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def test_a_bomb_is_skipped_and_counted_under_skip(tmp_path: Path, write_blank_png) -> None:
    # Prepare: a 20000 x 20000 PNG (400 megapixels, ~50 KB on disk) between two good images.
    write_blank_png(tmp_path / "bomb.png", 20000, 20000)
    solid_image((1, 2, 3)).save(tmp_path / "a.png")
    path = _table(tmp_path, ["a.png", "bomb.png", "a.png"])
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither PIL's warning nor its error may escape
        result = load_table(path, on_error="skip")
    # Assert
    assert len(result.rows) == 2 and result.skipped == 1
    assert result.problems == [
        f"{path}, line 2 (1-based): image file {tmp_path / 'bomb.png'} is 20000x20000 = 400,000,000 pixels, "
        "over data.max_image_pixels=50,000,000 (checked before decoding: a larger image may be a decompression bomb)"
    ]
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's own limit is restored


def test_a_bomb_under_raise_names_the_file_the_row_and_the_pixel_count(tmp_path: Path, write_blank_png) -> None:
    # Prepare
    write_blank_png(tmp_path / "img" / "bomb.png", 20000, 20000)
    path = _table(tmp_path, ["img/bomb.png"])
    # Execute / Assert
    expected = f"{path}, line 1 (1-based): image file {tmp_path / 'img' / 'bomb.png'} is 20000x20000 = 400,000,000"
    with pytest.raises(DataError, match=re.escape(expected) + r" pixels, over data.max_image_pixels=50,000,000"):
        load_table(path)


def test_an_oversized_image_is_rejected_before_it_is_decoded(tmp_path: Path, decoded_sizes, write_blank_png) -> None:
    # Prepare: 10000 x 10000 = 100 megapixels, twice the default limit (and over PIL's warning limit).
    write_blank_png(tmp_path / "big.png", 10000, 10000)
    solid_image((1, 2, 3)).save(tmp_path / "a.png")
    path = _table(tmp_path, ["big.png", "a.png"])
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_table(path, on_error="skip")
    # Assert: only the good image was ever decoded.
    assert result.skipped == 1 and "100,000,000 pixels, over data.max_image_pixels=50,000,000" in result.problems[0]
    assert decoded_sizes == [(8, 8)]


def test_null_limit_is_pils_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_blank_png) -> None:
    # Prepare: PIL's limit lowered to 100 pixels; a 30 x 20 image is over it (and over 2x: PIL's own error).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    write_blank_png(tmp_path / "wide.png", 30, 20)
    path = _table(tmp_path, ["wide.png"])
    # Execute
    with pixel_limit(None):
        result = load_table(path, on_error="skip")
    with pixel_limit(1000):
        allowed = load_table(path)
    # Assert: null = PIL's limit, named; a limit of ours above PIL's replaces it (no PIL error).
    assert result.skipped == 1
    assert (
        "30x20 = 600 pixels, over PIL's Image.MAX_IMAGE_PIXELS=100 (data.max_image_pixels: null)"
        in (result.problems[0])
    )
    assert allowed.rows[0]["image"].size == (30, 20) and Image.MAX_IMAGE_PIXELS == 100


def test_data_max_image_pixels_reaches_the_source(tmp_path: Path) -> None:
    # Prepare: 8 x 8 = 64 pixels against a limit of 63.
    solid_image((1, 2, 3)).save(tmp_path / "a.png")
    path = _table(tmp_path, ["a.png"] * 3)
    config = DataConfig(source="table", table={"path": str(path), "on_error": "skip"}, max_image_pixels=63)
    # Execute
    loaded = load_source(config, seed=0)
    # Assert
    assert DataConfig().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 50_000_000
    assert DataConfig(max_image_pixels=None).max_image_pixels is None
    assert loaded.train == [] and loaded.skipped == 3
    assert "8x8 = 64 pixels, over data.max_image_pixels=63" in loaded.problems[0]
    assert images_module.max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS  # reset after the load


def test_max_image_pixels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_image_pixels"):
        DataConfig(max_image_pixels=0)


def test_rows_hold_references_decoded_as_the_file_reads(tmp_path: Path, decoded_sizes) -> None:
    # Prepare
    solid_image((10, 20, 30), size=5).save(tmp_path / "a.png")
    solid_image((40, 50, 60), size=6).save(tmp_path / "b.png")
    path = _table(tmp_path, ["a.png", "b.png", "a.png"])
    # Execute
    rows = load_table(path).rows
    checked = list(decoded_sizes)
    clear_cache()
    decoded = [as_pil(row["image"]) for row in rows]
    # Assert: each file decoded once to check it, then only when asked for; same pixels as PIL's own decode.
    assert all(isinstance(row["image"], ImageRef) for row in rows) and rows[0]["image"] is rows[2]["image"]
    assert checked == [(5, 5), (6, 6)] and decoded_sizes == [(5, 5), (6, 6), (5, 5), (6, 6)]
    with Image.open(tmp_path / "b.png") as image:
        assert decoded[1].tobytes() == image.convert("RGB").tobytes() and decoded[1].mode == "RGB"
    assert decoded[0] is decoded[2]  # the second read comes from the cache


def test_the_cache_keeps_at_most_64_images(tmp_path: Path) -> None:
    # Prepare
    solid_image((1, 1, 1)).save(tmp_path / "a.png")
    refs = [ImageRef.checked(tmp_path / "a.png", f"image {i}") for i in range(100)]
    clear_cache()
    # Execute
    for ref in refs:
        ref.load()
    # Assert
    kept = images_module._CACHE._images
    assert len(kept) == images_module.CACHE_IMAGES == 64
    assert list(kept) == refs[36:]  # the 64 most recent


def test_the_cache_is_bounded_in_bytes_too() -> None:
    # Prepare: images of 4 x 100 x 100 bytes against a 100_000-byte cache.
    cache = images_module._LruCache(max_images=64, max_bytes=100_000)
    refs = [ImageRef(f"image {i}", (100, 100), data=_png_bytes((100, 100))) for i in range(5)]
    # Execute
    for ref in refs:
        cache.get(ref)
    # Assert: two images (80,000 bytes) fit; the newest always stays.
    assert len(cache) == 2


def _png_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (5, 6, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_file_replaced_after_loading_is_refused_at_batch_time(tmp_path: Path, write_blank_png) -> None:
    # Prepare
    solid_image((1, 2, 3)).save(tmp_path / "a.png")
    row = load_table(_table(tmp_path, ["a.png"])).rows[0]
    clear_cache()
    write_blank_png(tmp_path / "a.png", 20000, 20000)
    # Execute / Assert: the size checked at load time guards the decode.
    with pytest.raises(DataError, match=r"a\.png changed since loading: now 20000x20000, was \(8, 8\) \(at batch"):
        as_pil(row["image"])


def test_undecodable_bytes_are_a_row_problem_with_the_usual_message() -> None:
    with pytest.raises(RowProblem, match=r"^embedded image \(x\.png\) cannot be decoded \(cannot identify"):
        image_ref(b"not an image", "embedded image (x.png)")


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_the_number_of_images() -> None:
    # Execute: bench/memory.py loads 200, then 2,000 640x480 JPEGs through the table source and trains
    # one epoch over each set, each in a fresh process (decoded, 2,000 of them would take 2.4 GB).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "memory.py"), "--images", "200", "2000", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    small, large = json.loads(proc.stdout.strip().splitlines()[-1])
    # Assert: every image went through a batch, and peak RSS moved by less than 10%.
    assert (small["images"], small["steps"], large["images"], large["steps"]) == (200, 13, 2000, 125)
    assert abs(large["peak_rss_mb"] - small["peak_rss_mb"]) < 0.10 * small["peak_rss_mb"], (small, large)
