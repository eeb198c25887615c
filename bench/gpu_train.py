"""LoRA training throughput and peak GPU memory of real-size models (random weights).

Builds two random-init checkpoints at real size, saves them with ``save_pretrained`` and loads
them through fedumm's own ``from_pretrained`` path (``ModelHost``), then times LoRA training
steps with fedumm's trainer:

- ``blip-vqa-base``: the architecture of Salesforce/blip-vqa-base (ViT-B/16 at 384 px, BERT-base
  question encoder and answer decoder; 385M parameters), LoRA preset ``qv_self`` (FedUMM's
  1,179,648 trainable at r=16);
- ``llava-1.4b``: a LLaVA-1.5-shaped VLM with a CLIP ViT-L/14 tower at 336 px (576 image tokens)
  and a TinyLlama-1.1B-shaped decoder (2048 wide, 22 layers, GQA 32/4 heads, vocab 32,000),
  LoRA on the language-side q/k/v.

For each model and each gradient-checkpointing setting it prints samples/s (after warm-up
steps), seconds per step, peak GPU memory (``torch.cuda.max_memory_allocated``) and the
trainable parameter count. Weights are random, so the figures are about speed and memory,
not accuracy. The tokenizers are fedumm's tiny word-level ones (the configs keep the real
vocabulary sizes, so embedding and LM-head sizes are real).

    python bench/gpu_train.py                               # CUDA, bf16, both models
    python bench/gpu_train.py --models llava-1.4b --batch-size 8 --steps 20
    python bench/gpu_train.py --smoke                      # CPU check of the script: 2-layer models, fp32

Then, for K = 1, 4, 16 clients (``--clients``) of ``--client-batch`` rows each, the clients' local
steps one after another and together on the one base (``engine.parallel_clients``, vectorised
LoRA): samples/s, model FLOP/s, MFU (FLOPs counted by torch's FlopCounterMode over a real step;
see ``measure_clients``) and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelSpec:
    backend: str
    tiny: str  # built-in tiny model whose processor and special tokens are reused
    preset: str
    image_size: int
    patch_size: int


SPECS = {
    "blip-vqa-base": ModelSpec("blip_vqa", "tiny-blip-vqa", "qv_self", 384, 16),
    "llava-1.4b": ModelSpec("hf_vlm", "tiny-llava", "attention", 336, 14),
}


def _layers(real: int, smoke: bool) -> int:
    return 2 if smoke else real


def build_blip_vqa_base(tiny_path: str, out: Path, smoke: bool, spec: ModelSpec):
    from transformers import AutoConfig, AutoProcessor, BlipForQuestionAnswering

    processor = AutoProcessor.from_pretrained(tiny_path)
    processor.image_processor.size = {"height": spec.image_size, "width": spec.image_size}
    config = AutoConfig.from_pretrained(tiny_path)  # keeps the tokenizer's special-token ids
    text, vision = config.text_config, config.vision_config
    text.vocab_size, text.hidden_size, text.encoder_hidden_size = 30524, 768, 768
    text.intermediate_size, text.num_attention_heads = 3072, 12
    text.num_hidden_layers, text.max_position_embeddings = _layers(12, smoke), 512
    vision.hidden_size, vision.intermediate_size, vision.num_attention_heads = 768, 3072, 12
    vision.num_hidden_layers = _layers(12, smoke)
    vision.image_size, vision.patch_size = spec.image_size, spec.patch_size
    return BlipForQuestionAnswering(config), processor


def build_llava(tiny_path: str, out: Path, smoke: bool, spec: ModelSpec):
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_path)
    size = spec.image_size
    processor.image_processor.size = {"shortest_edge": size}
    processor.image_processor.crop_size = {"height": size, "width": size}
    processor.patch_size = spec.patch_size
    config = AutoConfig.from_pretrained(tiny_path)
    text, vision = config.text_config, config.vision_config
    text.vocab_size, text.hidden_size, text.intermediate_size = 32000, 2048, 5632
    text.num_hidden_layers = _layers(22, smoke)
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 32, 4, 64
    text.max_position_embeddings = 2048
    vision.hidden_size, vision.intermediate_size, vision.num_attention_heads = 1024, 4096, 16
    vision.num_hidden_layers = _layers(24, smoke)
    vision.image_size, vision.patch_size, vision.projection_dim = size, spec.patch_size, 768
    config.vision_feature_layer = -2  # LLaVA-1.5 reads the penultimate CLIP layer
    return LlavaForConditionalGeneration(config), processor


BUILDERS = {"blip-vqa-base": build_blip_vqa_base, "llava-1.4b": build_llava}


def save_checkpoint(name: str, out: Path, smoke: bool, device: str, image_size: int | None = None) -> int:
    """Random-init the model on ``device`` in bf16 on CUDA (fp32 on the CPU), save it; return
    #params. ``image_size`` replaces the real input resolution (bench/throughput.py's CPU runs)."""
    import torch

    from fedumm.models.tiny import resolve_model_path

    spec = SPECS[name] if image_size is None else replace(SPECS[name], image_size=image_size)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") and not smoke else torch.float32
    with torch.device(device):
        model, processor = BUILDERS[name](resolve_model_path(spec.tiny), out, smoke, spec)
    model = model.to(dtype)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    count = sum(p.numel() for p in model.parameters())
    del model
    return count


def measure(name: str, path: Path, args: argparse.Namespace, checkpointing: bool) -> dict:
    import torch

    from fedumm.adapters import count_parameters
    from fedumm.data.synthetic import make_synthetic_vqa
    from fedumm.federation import ModelHost
    from fedumm.validation import load_run_config

    spec = SPECS[name]
    cuda = args.device.startswith("cuda")
    overrides = [
        f"model.backend={spec.backend}",
        f"model.name_or_path={path}",
        f"model.device={args.device}",
        f"model.dtype={'bfloat16' if cuda else 'float32'}",
        f"model.gradient_checkpointing={'true' if checkpointing else 'false'}",
        f"adapter.preset={spec.preset}",
        f"adapter.r={args.rank}",
        f"train.precision={'bf16' if cuda else 'fp32'}",
        f"train.batch_size={args.batch_size}",
        "train.lr=1e-4",
    ]
    config = load_run_config(None, overrides)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    host = ModelHost(config)
    trainable, total = count_parameters(host.model)
    loaded_bytes = torch.cuda.max_memory_allocated() if cuda else 0
    samples = make_synthetic_vqa(args.batch_size * (args.steps + args.warmup), seed=0, image_size=args.image_size)

    def run(steps: int) -> float:
        train = config.train.model_copy(update={"local_steps": steps})
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        host.train(samples, train, seed=0, hooks=None, progress=False, description=name)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(args.warmup)  # kernels, allocator and autotuning settle
    seconds = run(args.steps)
    result = {
        "model": name,
        "gradient_checkpointing": checkpointing,
        "parameters": total,
        "trainable": trainable,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": seconds / args.steps,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "weights_gpu_mib": loaded_bytes / 2**20 if cuda else None,
    }
    host = None  # frees the model (run() closes over the name) before the next one loads
    return result


#: Dense bf16 peak FLOP/s by GPU name (datasheet, without sparsity), for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    import torch

    if not device.startswith("cuda"):
        return None
    gpu = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16.items() if key in gpu), None)


def measure_clients(name: str, path: Path, args: argparse.Namespace) -> list[dict]:
    """K clients' local steps, one after another (``host.train``) and together (``host.train_clients``,
    engine.parallel_clients): samples/s, MFU and peak GPU memory per (K, mode).

    FLOPs: counted by ``torch.utils.flop_counter.FlopCounterMode`` over one real training step of
    one client (every matmul, convolution and attention the step runs, forward and backward: with
    a frozen base that is about 2·P·T for the towers without LoRA, forward only, plus 4·P·T where
    gradients flow back, P the weights on the path and T the tokens), per row; a (K, mode) run does
    K x steps x client_batch rows. MFU = those FLOPs / seconds / the GPU's dense bf16 peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fedumm.data.synthetic import make_synthetic_vqa
    from fedumm.federation import ModelHost
    from fedumm.federation.parallel import ClientJob
    from fedumm.types import LocalHooks
    from fedumm.validation import load_run_config

    spec = SPECS[name]
    cuda = args.device.startswith("cuda")
    batch = args.client_batch
    config = load_run_config(
        None,
        [
            f"model.backend={spec.backend}",
            f"model.name_or_path={path}",
            f"model.device={args.device}",
            f"model.dtype={'bfloat16' if cuda else 'float32'}",
            f"adapter.preset={spec.preset}",
            f"adapter.r={args.rank}",
            "adapter.dropout=0",
            f"train.precision={'bf16' if cuda else 'fp32'}",
            f"train.batch_size={batch}",
            "train.lr=1e-4",
        ],
    )
    host = ModelHost(config)
    peak = peak_flops(args.device, args.peak_tflops)
    one = make_synthetic_vqa(batch, seed=0, image_size=args.image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        host.train(one, config.train.model_copy(update={"local_steps": 1}), 0, None, False, name)
    flops_per_row = counter.get_total_flops() / batch

    def run(k: int, mode: str, steps: int) -> float:
        train = config.train.model_copy(update={"local_steps": steps})
        data = [make_synthetic_vqa(batch * steps, seed=c, image_size=args.image_size) for c in range(k)]
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if mode == "sequential":
            for c in range(k):
                host.train(data[c], train, seed=c, hooks=None, progress=False, description=name)
        else:
            state = host.trainable_state()
            jobs = [ClientJob(data[c], c, LocalHooks(), state, f"client {c}") for c in range(k)]
            host.train_clients(jobs, train, progress=False)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    rows = []
    for k in args.clients:
        for mode in ("sequential", "vectorised"):
            row = {"model": name, "clients": k, "mode": mode, "client_batch": batch, "steps": args.steps}
            try:
                run(k, mode, args.warmup)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                seconds = run(k, mode, args.steps)
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of GPU memory"
                torch.cuda.empty_cache()
            else:
                rows_done = k * args.steps * batch
                row["samples_per_s"] = rows_done / seconds
                row["tflops_per_s"] = flops_per_row * rows_done / seconds / 1e12
                row["mfu"] = flops_per_row * rows_done / seconds / peak if peak else None
                row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    host = None  # frees the model before the next one loads
    return rows


def print_clients_table(rows: list[dict]) -> None:
    header = f"{'model':<14} {'K':>3} {'mode':<10} {'samples/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak GPU MiB':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14} {r['clients']:>3} {r['mode']:<10} {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        peak = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        print(
            f"{r['model']:<14} {r['clients']:>3} {r['mode']:<10} {r['samples_per_s']:>9.1f} "
            f"{r['tflops_per_s']:>8.2f} {mfu:>6} {peak:>12}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--image-size", type=int, default=64, help="synthetic image side (the processor resizes)")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument(
        "--smoke", action="store_true", help="2-layer towers in fp32 on the CPU: checks the script, not a measurement"
    )
    parser.add_argument(
        "--clients",
        type=int,
        nargs="*",
        default=[1, 4, 16],
        help="client counts K for the sequential vs vectorised (engine.parallel_clients) table; none: skip it",
    )
    parser.add_argument("--client-batch", type=int, default=2, help="the K-client table's batch size per client")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: by GPU name)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    import torch

    args.device = args.device or ("cpu" if args.smoke else "cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA GPU (use --smoke for a CPU check)")
    if args.smoke:
        args.batch_size, args.steps, args.warmup = min(args.batch_size, 2), min(args.steps, 2), 1
        args.clients, args.client_batch = sorted({min(k, 2) for k in args.clients}), 1
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device {gpu}; torch {torch.__version__}; batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.steps} timed steps, LoRA r={args.rank}{'; SMOKE (2-layer, fp32)' if args.smoke else ', bf16'}"
    )
    rows: list[dict] = []
    client_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fedumm-gpu-bench-") as tmp:
        for name in args.models:
            path = Path(tmp) / name
            t0 = time.perf_counter()
            count = save_checkpoint(name, path, args.smoke, args.device)
            print(
                f"{name}: {count / 1e6:.0f}M parameters, built and saved in {time.perf_counter() - t0:.0f}s", flush=True
            )
            for checkpointing in settings:
                row = measure(name, path, args, checkpointing)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.clients:
                client_rows += measure_clients(name, path, args)
    print()
    header = (
        f"{'model':<14} {'params':>7} {'trainable':>10} {'grad ckpt':>9} {'batch':>5} "
        f"{'s/step':>7} {'samples/s':>9} {'peak GPU MiB':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        print(
            f"{r['model']:<14} {r['parameters'] / 1e6:>6.0f}M {r['trainable']:>10,} "
            f"{'on' if r['gradient_checkpointing'] else 'off':>9} {r['batch_size']:>5} "
            f"{r['seconds_per_step']:>7.3f} {r['samples_per_s']:>9.1f} {peak:>12}"
        )
    if client_rows:
        print()
        print_clients_table(client_rows)
    if args.json:
        args.json.write_text(json.dumps(rows + client_rows, indent=1))


if __name__ == "__main__":
    main()
