"""Tests for the backend contract's image access (fedumm.models.base.Backend.row_images): rows hold image
references, decoded here, when a batch is built."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fedumm.data.images import ImageRef, clear_cache
from fedumm.models.base import Backend


def _ref(path: Path, rgb: tuple[int, int, int]) -> ImageRef:
    Image.new("RGB", (6, 4), rgb).save(path)
    return ImageRef.checked(path, f"image file {path}")


def test_row_images_decodes_references_and_keeps_pil_images(tmp_path: Path) -> None:
    # Prepare: a row with two referenced images, one with an in-memory image (synthetic), one without.
    first, second = _ref(tmp_path / "a.png", (1, 2, 3)), _ref(tmp_path / "b.png", (4, 5, 6))
    in_memory = Image.new("RGB", (3, 3), (7, 8, 9))
    clear_cache()
    # Execute
    many = Backend.row_images({"image": first, "images": [first, second]})
    one = Backend.row_images({"image": first})
    kept = Backend.row_images({"image": in_memory})
    blank = Backend.row_images({"image": None, "images": []})
    # Assert
    assert [(im.mode, im.size, im.getpixel((0, 0))) for im in many] == [
        ("RGB", (6, 4), (1, 2, 3)),
        ("RGB", (6, 4), (4, 5, 6)),
    ]
    assert one[0] is many[0]  # decoded once, then from the cache
    assert kept[0] is in_memory
    assert blank[0].size == (32, 32) and blank[0].getextrema() == ((0, 0), (0, 0), (0, 0))


def test_segment_losses_match_each_segments_own_loss(lora_model) -> None:
    # Prepare: segments of 1, 4 and 2 rows; the loss averages over answer tokens, not rows.
    import torch

    from fedumm.data.synthetic import make_synthetic_vqa

    model, backend = lora_model
    parts = [make_synthetic_vqa(n, seed=n) for n in (1, 4, 2)]
    # Execute
    with torch.no_grad():
        joint = backend.segment_losses(model, backend.training_batch([r for p in parts for r in p]), [1, 4, 2])
        alone = torch.stack([backend.loss(model, backend.training_batch(p)) for p in parts])
        rows = backend.sample_losses(model, backend.training_batch(parts[1]))
    # Assert
    assert torch.allclose(joint, alone, atol=1e-5)
    assert torch.allclose(joint[1], rows.mean(), atol=1e-2)  # close to, but not, the mean of row means
