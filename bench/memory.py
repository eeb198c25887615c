"""Peak memory of the simulation engine with 1 and with 16 clients on one base model.

The engine keeps ONE frozen base model per process and swaps each client's adapter in and
out, so peak RSS should barely move with the number of clients (a model copy per client, as
in FedUMM's reference simulation, would grow about 16x).

The base is a random-init LLaVA-shaped model (CLIP-base-sized vision tower, a 12-layer
768-wide Llama decoder: ~170M parameters, ~690 MB in float32), saved once and loaded through
``from_pretrained`` like any checkpoint. Each measurement runs in a fresh process.

    python bench/memory.py                 # 1 vs 16 clients
    python bench/memory.py --clients 1 4 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def build_base(path: Path) -> int:
    """Save a random LLaVA with the tiny model's processor; return its weight bytes."""
    import torch
    from transformers import (
        AutoProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from fedumm.models.tiny import resolve_model_path, tiny_vocab

    processor = AutoProcessor.from_pretrained(resolve_model_path("tiny-llava"))
    vocab = tiny_vocab()
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=32,
        patch_size=8,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def child(num_clients: int, model_path: str, out_dir: str) -> None:
    from fedumm.engines.simulation import simulate
    from fedumm.validation import load_run_config

    config = load_run_config(
        None,
        [
            f"model.name_or_path={model_path}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            f"federation.num_clients={num_clients}",
            "federation.rounds=2",
            "data.synthetic.train_samples=320",
            "data.synthetic.test_samples=8",
            "data.partition.alpha=0",
            "data.partition.min_samples=4",
            "data.local_test_fraction=0",
            "train.local_steps=1",
            "train.batch_size=2",
            "eval.clients=false",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={out_dir}",
            f"output.name=clients{num_clients}",
        ],
    )
    simulate(config)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"clients": num_clients, "peak_rss_mb": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.model, args.out)
        return

    with tempfile.TemporaryDirectory(prefix="fedumm-bench-memory-") as tmp:
        model_path = Path(tmp) / "llava-170m-random"
        weight_bytes = build_base(model_path)
        print(f"base model: {weight_bytes / 1e6:.0f} MB of float32 weights at {model_path}")
        results = []
        for n in args.clients:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--model", str(model_path), "--out", tmp],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"child with {n} clients failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{'clients':>8}  {'peak RSS (MB)':>14}  {'vs 1 client':>11}")
        for r in results:
            print(
                f"{r['clients']:>8}  {r['peak_rss_mb']:>14.0f}  {r['peak_rss_mb'] / results[0]['peak_rss_mb']:>10.2f}x"
            )
        naive = weight_bytes / 1e6 * max(args.clients)
        print(f"a model copy per client would need at least {naive:.0f} MB of weights for {max(args.clients)} clients")


if __name__ == "__main__":
    main()
