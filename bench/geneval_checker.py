"""GenEval-style checker table: how often it accepts the synthetic t2i targets, clean and distorted,
how often it accepts a wrong image, and its speed.

For each image size, the synthetic text-to-image split (every GenEval category in turn) is
rendered and each target image is checked against its own prompt's metadata after a
distortion (none, JPEG at quality 75 and 50, Gaussian blur of radius 1, Gaussian pixel noise
of sd 20, resampling to 3/4 of the size and back up); the last row checks every image against
the next row's metadata (a wrong image for the prompt), so lower is better there. Prints the
share of correct images per cell, GenEval's overall score (mean over categories) for the clean
targets, and the checker's time per image.

    python bench/geneval_checker.py
    python bench/geneval_checker.py --rows 600 --sizes 32 64 128
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image, ImageFilter

from fedumm.data.synthetic import COLORS, make_synthetic_t2i
from fedumm.metrics.geneval import check_image, summarize


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image: Image.Image, sd: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + np.random.default_rng(0).normal(0, sd, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _resample(image: Image.Image) -> Image.Image:
    side = image.size[0]
    return image.resize((side * 3 // 4,) * 2, Image.BILINEAR).resize((side, side), Image.BILINEAR)


DISTORTIONS = {
    "clean": lambda im: im,
    "jpeg q75": lambda im: _jpeg(im, 75),
    "jpeg q50": lambda im: _jpeg(im, 50),
    "blur r1": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
    "noise sd20": lambda im: _noise(im, 20),
    "resample 3/4": _resample,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="synthetic t2i rows per image size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"rows per size: {args.rows}, seed {args.seed}; cells: share of images the checker calls correct")
    header = "| image | " + " | ".join(DISTORTIONS) + " | wrong prompt | GenEval overall (clean) | ms / image |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        rows = make_synthetic_t2i(args.rows, args.seed, split="test", image_size=size)
        cells = []
        overall = seconds = 0.0
        for name, distort in DISTORTIONS.items():
            images = [distort(r["image"]) for r in rows]
            start = time.perf_counter()
            verdicts = [check_image(im, r["geneval"], COLORS).correct for im, r in zip(images, rows)]
            if name == "clean":
                seconds = (time.perf_counter() - start) / len(rows)
                records = [{"tag": r["tag"], "correct": v} for r, v in zip(rows, verdicts)]
                overall = summarize(records)["geneval_overall"]
            cells.append(f"{np.mean(verdicts):.3f}")
        shifted = rows[1:] + rows[:1]
        wrong = np.mean([check_image(a["image"], b["geneval"], COLORS).correct for a, b in zip(rows, shifted)])
        print(f"| {size} px | " + " | ".join(cells) + f" | {wrong:.3f} | {overall:.3f} | {seconds * 1000:.1f} |")


if __name__ == "__main__":
    main()
