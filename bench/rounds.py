"""What makes a round cheaper, as ratios measured in one process on the tiny default model:

- local training with the preprocessing cache (``train.preprocess_cache_mb``) vs without: the
  same rows, epochs and seed, each setting timed ``--repeats`` times alternately (best kept);
- the global evaluation's decoding: batched greedy decoding over the KV cache (fedumm's path)
  vs the same batches without the cache, and vs one row at a time;
- ``eval.mode: score`` (one forward pass per choice) vs generation on yes/no rows.

    python bench/rounds.py
    python bench/rounds.py --rows 64 --repeats 2      # quicker
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def host_for(tmp: str, *overrides: str):
    from fedumm.federation import ModelHost
    from fedumm.validation import load_run_config

    return ModelHost(load_run_config(None, ["model.device=cpu", f"output.dir={tmp}", *overrides]))


def measure_training(tmp: str, rows: list[dict], epochs: int, repeats: int) -> tuple[float, float]:
    """Seconds of ``epochs`` local epochs on ``rows``: cache on (after its first epoch filled it), cache off."""
    cached = host_for(tmp, f"train.local_epochs={epochs}")
    plain = host_for(tmp, f"train.local_epochs={epochs}", "train.preprocess_cache_mb=0")
    cached.train(rows, cached.config.train, 0, None, False, "fill")  # a run preprocesses each row once
    on = best_of(repeats, lambda: cached.train(rows, cached.config.train, 0, None, False, "cached"))
    off = best_of(repeats, lambda: plain.train(rows, plain.config.train, 0, None, False, "plain"))
    return on, off


def measure_decoding(tmp: str, rows: list[dict], batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds to answer ``rows``: batched with the KV cache (fedumm's path), batched without, one row at a time."""
    import torch

    host = host_for(tmp)
    backend, model = host.backend, host.model

    @torch.no_grad()
    def uncached():
        for start in range(0, len(rows), batch_size):
            encoded = backend.to_device(backend._encode_prompts(rows[start : start + batch_size], padding_side="left"))
            model.generate(
                **encoded,
                max_new_tokens=backend.config.max_new_tokens,
                do_sample=False,
                use_cache=False,
                pad_token_id=backend.tokenizer.pad_token_id,
                eos_token_id=backend.stop_token_ids(),
            )

    return {
        "batched_kv_cache": best_of(repeats, lambda: host.predict(rows, batch_size)),
        "batched_no_cache": best_of(repeats, uncached),
        "one_row_kv_cache": best_of(repeats, lambda: host.predict(rows, 1)),
    }


def measure_score(tmp: str, rows: list[dict], batch_size: int, repeats: int) -> tuple[float, float]:
    """Seconds to answer yes/no ``rows`` under eval.mode score and generate."""
    host = host_for(tmp, "eval.task=classification", "eval.mode=score", "eval.choices=['yes', 'no']")
    score = best_of(repeats, lambda: host.predict(rows, batch_size))
    generate = best_of(
        repeats,
        lambda: [host.backend.predict(host.model, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)],
    )
    return score, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="training rows and test rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from fedumm.data.synthetic import make_synthetic_vqa

    torch.set_num_threads(args.threads)
    train = make_synthetic_vqa(args.rows, seed=1)
    test = make_synthetic_vqa(args.rows, seed=2, split="test")
    yes_no = [r for r in make_synthetic_vqa(4 * args.rows, seed=3) if r["answer_type"] == "yes/no"][: args.rows]
    print(f"tiny default (hf_vlm tiny-llava), {args.rows} rows, torch threads {args.threads}, best of {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="fedumm-rounds-bench-") as tmp:
        on, off = measure_training(tmp, train, args.epochs, args.repeats)
        print(f"local training, {args.epochs} epochs: cache {on:.2f}s, no cache {off:.2f}s -> {off / on:.2f}x")
        decoding = measure_decoding(tmp, test, args.batch_size, args.repeats)
        fast = decoding["batched_kv_cache"]
        print(
            f"global evaluation ({args.rows} rows, batch {args.batch_size}): batched + KV cache {fast:.2f}s; "
            f"without the cache {decoding['batched_no_cache']:.2f}s ({decoding['batched_no_cache'] / fast:.2f}x); "
            f"one row at a time {decoding['one_row_kv_cache']:.2f}s ({decoding['one_row_kv_cache'] / fast:.2f}x)"
        )
        score, generate = measure_score(tmp, yes_no, args.batch_size, args.repeats)
        print(
            f"yes/no rows ({len(yes_no)}): eval.mode score {score:.2f}s, generate {generate:.2f}s "
            f"-> {generate / score:.2f}x"
        )


if __name__ == "__main__":
    main()
