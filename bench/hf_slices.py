"""Reading a slice of a large split: the ``hf`` source's row-group reads against preparing the whole
split with ``datasets`` (what the source did before), on a VQAv2 data set written by
``fedumm data vqav2`` from generated stand-ins of the official files.

It writes N questions (five per COCO-named image, embedded JPEG bytes as the Hub's parquet has
them), then times, each in this one process, on the same files:

- ``fedumm data vqav2`` itself (questions per second);
- the hf source reading ``validation[:1%]``, and ``max_samples: 200`` of the whole split;
- ``datasets.load_dataset`` of the folder (whole split into datasets' Arrow cache, in a temporary
  folder) followed by the same 1% selection.

Compare the ratios, not the absolute times (the CPU is shared).

    python bench/hf_slices.py                 # 20,000 questions
    python bench/hf_slices.py --questions 50000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_official(root: Path, questions: int) -> dict[str, Path]:
    """Official-layout question/annotation files and val2014 images (64x64 noise JPEGs, 5 questions each)."""
    import numpy as np
    from PIL import Image

    from fedumm.data.vqav2 import coco_image_name

    (root / "val2014").mkdir(parents=True)
    rng = np.random.default_rng(0)
    qs, anns = [], []
    for n in range(questions):
        image_id = n // 5 + 1
        if n % 5 == 0:
            noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(noise).save(root / "val2014" / coco_image_name("val2014", image_id), quality=90)
        qs.append({"image_id": image_id, "question": f"what is {n}?", "question_id": n})
        answers = [{"answer": str(n % 7), "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]
        anns.append(
            {
                "question_id": n,
                "image_id": image_id,
                "answers": answers,
                "multiple_choice_answer": str(n % 7),
                "answer_type": "number",
                "question_type": "what",
            }
        )
    head = {"data_subtype": "val2014", "data_type": "mscoco"}
    (root / "q.json").write_text(json.dumps({**head, "questions": qs}))
    (root / "a.json").write_text(json.dumps({**head, "annotations": anns}))
    return {"questions": root / "q.json", "annotations": root / "a.json", "images": root / "val2014"}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf_cache")  # nothing outside the temp folder
        import datasets

        from fedumm.data.sources.hf import load_hf_vqa
        from fedumm.data.vqav2 import write_vqav2

        datasets.disable_progress_bars()
        files = write_official(Path(tmp) / "official", args.questions)
        out = Path(tmp) / "vqav2"
        written, convert_s = timed(lambda: write_vqav2(**files, out=out, embed_images=True))
        size_mb = sum(f.stat().st_size for f in written.files) / 2**20
        print(
            f"fedumm data vqav2: {written.rows:,} questions, {size_mb:.1f} MB parquet, {convert_s:.2f} s "
            f"({written.rows / convert_s:,.0f} questions/s)"
        )

        sliced, slice_s = timed(lambda: load_hf_vqa(str(out), "validation[:1%]"))
        drawn, draw_s = timed(lambda: load_hf_vqa(str(out), "validation", max_samples=200, seed=0))

        def prepare_then_slice() -> int:
            split = datasets.load_dataset(str(out), split="validation")
            return len(split.select(range(len(split) // 100)))

        full_rows, full_s = timed(prepare_then_slice)
        print(f"hf source, validation[:1%]: {len(sliced.rows):,} rows in {slice_s:.2f} s")
        print(f"hf source, max_samples=200: {len(drawn.rows):,} rows in {draw_s:.2f} s")
        print(f"datasets.load_dataset whole split, then 1%: {full_rows:,} rows in {full_s:.2f} s")
        print(f"ratio whole-split preparation / row-group slice: {full_s / slice_s:.1f}x")


if __name__ == "__main__":
    main()
