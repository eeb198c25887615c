"""Peak memory: of the simulation engine with 1, 4 and 16 clients on one base model, the clients
trained one after another and together (``engine.parallel_clients``); and (--images) of loading
and training over N image files.

The engine keeps ONE frozen base model per process and swaps each client's adapter in and
out, so peak RSS should barely move with the number of clients (a model copy per client, as
in FedUMM's reference simulation, would grow about 16x). Trained together, K clients add K
adapters with their optimizer states and one joint batch of K x train.batch_size rows, whose
activations grow with K.

The base is, with ``--model llava`` (default), a random-init LLaVA-shaped model (CLIP-base-sized
vision tower at 32 px, a 12-layer 768-wide Llama decoder: ~170M parameters, ~690 MB in float32);
with ``--model blip-vqa-base`` the real-size random blip-vqa-base (385M parameters, ~1.5 GB in
float32, built by bench/gpu_train.py) at ``--image-size`` px (384 is its real size). Each is saved
once and loaded through ``from_pretrained`` like any checkpoint; each measurement runs one round
(one local step of batch 2 per client) in a fresh process.

With ``--images N ...`` it instead writes N 640x480 JPEGs and a table naming them, loads the
table through the ``table`` source and trains the built-in tiny LLaVA (LoRA) for one epoch over
every image, in a fresh process per N. Rows keep image references and batches decode them
through a 64-image cache, so peak RSS should not grow with N (decoded, 2,000 such images
would hold 2.4 GB).

    python bench/memory.py                 # 1, 4, 16 clients, sequential and vectorised
    python bench/memory.py --model blip-vqa-base --image-size 384 --modes vectorised
    python bench/memory.py --images 200 2000
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


def child(num_clients: int, model_path: str, out_dir: str, mode: str, backend: str) -> None:
    from fedumm.engines.simulation import simulate
    from fedumm.validation import load_run_config

    config = load_run_config(
        None,
        [
            f"model.backend={backend}",
            f"model.name_or_path={model_path}",
            f"engine.parallel_clients={num_clients if mode == 'vectorised' else 1}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            f"federation.num_clients={num_clients}",
            "federation.rounds=1",
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
            f"output.name=clients{num_clients}-{mode}",
        ],
    )
    simulate(config)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"clients": num_clients, "mode": mode, "peak_rss_mb": peak_kib / 1024}))


IMAGE_SIZE = (640, 480)


def write_images(folder: Path, count: int) -> list[str]:
    """``count`` distinct 640x480 JPEGs (a gradient with a per-image tint: tens of KB each); their names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width, height = IMAGE_SIZE
    ramp = Image.linear_gradient("L").resize(IMAGE_SIZE)
    names = []
    for i in range(count):
        tint = Image.new("L", IMAGE_SIZE, (i * 37) % 256)
        Image.merge("RGB", (ramp, tint, ramp.rotate(180))).save(folder / f"{i}.jpg", quality=85)
        names.append(f"images/{i}.jpg")
    return names


def write_table(path: Path, names: list[str]) -> None:
    answers = ("yes", "no")
    lines = [json.dumps({"image": n, "question": "is it red ?", "answer": answers[i % 2]}) for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n")


def child_images(table: str) -> None:
    """Load ``table`` through the table source, train one epoch over it, print peak RSS."""
    import time

    import torch

    from fedumm.adapters import apply_lora
    from fedumm.config import AdapterConfig, ModelConfig, TrainConfig
    from fedumm.data.sources.table import load_table
    from fedumm.federation.train import train_local
    from fedumm.models.registry import get_backend

    torch.set_num_threads(1)  # the tiny model gains nothing from more; keeps the bench quiet on a busy machine
    start = time.perf_counter()
    rows = load_table(table).rows
    loaded = time.perf_counter()
    after_load_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    backend = get_backend("hf_vlm")(ModelConfig(device="cpu"))
    torch.manual_seed(0)
    model = apply_lora(backend.load(), AdapterConfig(), backend.lora_target_regex(AdapterConfig()))
    result = train_local(model, backend, rows, TrainConfig(batch_size=16), seed=0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "images": len(rows),
                "steps": result.steps,
                "load_s": round(loaded - start, 1),
                "train_s": round(time.perf_counter() - loaded, 1),
                "peak_rss_after_load_mb": round(after_load_kib / 1024, 1),
                "peak_rss_mb": round(peak_kib / 1024, 1),
            }
        )
    )


def run_images(counts: list[int], as_json: bool) -> list[dict]:
    """One child per count, over the first ``count`` of max(counts) images; prints a table (or JSON)."""
    with tempfile.TemporaryDirectory(prefix="fedumm-bench-images-") as tmp:
        names = write_images(Path(tmp) / "images", max(counts))
        results = []
        for n in counts:
            table = Path(tmp) / f"table{n}.jsonl"
            write_table(table, names[:n])
            proc = subprocess.run(
                [sys.executable, __file__, "--child-images", str(table)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                sys.exit(f"child with {n} images failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if as_json:
        print(json.dumps(results))
        return results
    print(
        f"{'images':>7}  {'load (s)':>8}  {'train (s)':>9}  {'RSS after load (MB)':>19}  {'peak RSS (MB)':>13}  ratio"
    )
    for r in results:
        ratio = r["peak_rss_mb"] / results[0]["peak_rss_mb"]
        print(
            f"{r['images']:>7}  {r['load_s']:>8}  {r['train_s']:>9}  {r['peak_rss_after_load_mb']:>19.0f}  "
            f"{r['peak_rss_mb']:>13.0f}  {ratio:.3f}x"
        )
    decoded = max(counts) * IMAGE_SIZE[0] * IMAGE_SIZE[1] * 4 / 1e6
    print(f"holding {max(counts)} decoded {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images would take {decoded:.0f} MB")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    modes = ["sequential", "vectorised"]
    parser.add_argument("--modes", nargs="+", choices=modes, default=modes, help="clients one by one or together")
    parser.add_argument("--model", choices=["llava", "blip-vqa-base"], default="llava", help="the base model")
    parser.add_argument("--image-size", type=int, default=384, help="blip-vqa-base: image side in px")
    parser.add_argument("--images", type=int, nargs="+", help="image counts to compare instead of client counts")
    parser.add_argument("--json", action="store_true", help="--images: print the results as one JSON list")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-images", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sequential", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="hf_vlm", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.model_path, args.out, args.mode, args.backend)
        return
    if args.child_images is not None:
        child_images(args.child_images)
        return
    if args.images:
        run_images(args.images, args.json)
        return

    with tempfile.TemporaryDirectory(prefix="fedumm-bench-memory-") as tmp:
        if args.model == "llava":
            model_path, backend = Path(tmp) / "llava-170m-random", "hf_vlm"
            weight_bytes = build_base(model_path)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from gpu_train import save_checkpoint

            model_path, backend = Path(tmp) / "blip-vqa-base-random", "blip_vqa"
            weight_bytes = 4 * save_checkpoint("blip-vqa-base", model_path, False, "cpu", args.image_size)
        print(f"base model: {weight_bytes / 1e6:.0f} MB of float32 weights at {model_path}")
        results = []
        for mode in args.modes:
            for n in args.clients:
                command = [sys.executable, __file__, "--child", str(n), "--model-path", str(model_path)]
                command += ["--out", tmp, "--mode", mode, "--backend", backend]
                proc = subprocess.run(command, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"child with {n} clients ({mode}) failed:\n{proc.stderr[-2000:]}")
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
        print(f"{'mode':>10}  {'clients':>8}  {'peak RSS (MB)':>14}  {'vs 1 client':>11}")
        for r in results:
            first = next(x for x in results if x["mode"] == r["mode"])["peak_rss_mb"]
            print(f"{r['mode']:>10}  {r['clients']:>8}  {r['peak_rss_mb']:>14.0f}  {r['peak_rss_mb'] / first:>10.2f}x")
        naive = weight_bytes / 1e6 * max(args.clients)
        print(f"a model copy per client would need at least {naive:.0f} MB of weights for {max(args.clients)} clients")


if __name__ == "__main__":
    main()
