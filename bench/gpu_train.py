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
steps), seconds per step, model FLOPs utilisation, peak GPU memory
(``torch.cuda.max_memory_allocated``) and the trainable parameter count; then the same for the
base loaded in 4-bit NF4 (QLoRA, ``model.quantization=4bit``; needs the qlora extra). bf16
autocast, attention through SDPA where the family has it (``model.attn_implementation=auto``),
``--compile`` for ``model.compile``. Weights are random, so the figures are about speed and
memory, not accuracy. The tokenizers are fedumm's tiny word-level ones (the configs keep the
real vocabulary sizes, so embedding and LM-head sizes are real).

FLOPs (``count_step_flops``): the matrix multiplications of one training step, counted by hooks
on every ``nn.Linear`` and ``nn.Conv2d`` as they run: forward 2·in·out per row; backward
2·in·out per row for the input's gradient where the input needs one, plus 2·in·out per row for
the weight's gradient where the weight trains (LoRA A and B only). So a frozen layer the
gradient passes through costs 4·N per token, a LoRA factor 6·N, and a frozen tower the gradient
never reaches (BLIP's and LLaVA's vision towers under language-side LoRA) 2·N: the 6·N·tokens
rule of full fine-tuning overcounts LoRA. Attention's score and value products (QKᵀ, AV),
norms and activations are left out; the count is taken once per model without gradient
checkpointing (``model_flops``), so recomputation is not counted (model FLOPs, not hardware
FLOPs) and every row of a model shares it. MFU = FLOPs per step / seconds per step / the GPU's dense
bf16 peak (``PEAK_TFLOPS`` by device name, or ``--peak-tflops``).

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

#: Dense bf16 tensor-core peak (TFLOP/s) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def count_step_flops(host, rows: list[dict]) -> float:
    """Matrix-multiply FLOPs of one training step on ``rows`` (see the module docstring), counted
    by hooks during a real forward and backward (gradients are cleared afterwards)."""
    import torch

    flops = [0.0]

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, torch.nn.Linear):
            per_row = module.in_features * module.out_features
            rows_ = x.numel() // module.in_features
        else:  # Conv2d: one output position is a dot product over in_channels * kernel
            kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            per_row, rows_ = kernel * module.out_channels, output.numel() // module.out_channels
        passes = 1 + x.requires_grad + module.weight.requires_grad  # forward, input grad, weight grad
        flops[0] += 2.0 * per_row * rows_ * passes

    handles = [
        m.register_forward_hook(hook) for m in host.model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    try:
        backend = host.backend
        host.model.train()
        batch = backend.to_device(backend.training_batch(rows))
        with torch.autocast(backend.device.type, dtype=torch.bfloat16, enabled=backend.device.type == "cuda"):
            loss = backend.loss(host.model, batch)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        host.model.zero_grad(set_to_none=True)
        host.model.eval()
    return flops[0]


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


def host_config(name: str, path: Path, args: argparse.Namespace, checkpointing: bool, quantization: str = "none"):
    from fedumm.validation import load_run_config

    spec = SPECS[name]
    cuda = args.device.startswith("cuda")
    return load_run_config(
        None,
        [
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
            f"model.quantization={quantization}",
            f"model.compile={'true' if args.compile else 'false'}",
        ],
    )


def model_flops(name: str, path: Path, args: argparse.Namespace) -> float:
    """Model FLOPs of one training step (``count_step_flops``) on a host without gradient
    checkpointing: recomputation and the checkpointed model's input-gradient hook add hardware
    work, not model FLOPs, so every row of a model shares this count."""
    from fedumm.data.synthetic import make_synthetic_vqa
    from fedumm.federation import ModelHost

    host = ModelHost(host_config(name, path, args, checkpointing=False))
    rows = make_synthetic_vqa(args.batch_size, seed=0, image_size=args.image_size)
    return count_step_flops(host, rows)


def measure(
    name: str,
    path: Path,
    args: argparse.Namespace,
    checkpointing: bool,
    step_flops: float,
    quantization: str = "none",
) -> dict:
    """One training measurement: samples/s, MFU and peak memory of LoRA (``quantization`` 4bit: QLoRA)."""
    import torch

    from fedumm.adapters import count_parameters
    from fedumm.data.synthetic import make_synthetic_vqa
    from fedumm.federation import ModelHost

    cuda = args.device.startswith("cuda")
    config = host_config(name, path, args, checkpointing, quantization)
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
    peak = peak_tflops(args.gpu, args.peak_tflops) if cuda else None
    achieved = step_flops * args.steps / seconds
    result = {
        "model": name,
        "quantization": quantization,
        "gradient_checkpointing": checkpointing,
        "parameters": total,
        "trainable": trainable,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": seconds / args.steps,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "tflops_per_step": step_flops / 1e12,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "weights_gpu_mib": loaded_bytes / 2**20 if cuda else None,
    }
    host = None  # frees the model (run() closes over the name) before the next one loads
    return result


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
    peak_t = peak_tflops(args.gpu, args.peak_tflops) if cuda else None
    peak = peak_t * 1e12 if peak_t else None
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
    parser.add_argument("--qlora", choices=["off", "on"], default="on", help="also measure the 4-bit base (CUDA)")
    parser.add_argument("--compile", action="store_true", help="model.compile: torch.compile the forward")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak for MFU (default: by name)")
    parser.add_argument(
        "--clients",
        type=int,
        nargs="*",
        default=[1, 4, 16],
        help="client counts K for the sequential vs vectorised (engine.parallel_clients) table; none: skip it",
    )
    parser.add_argument("--client-batch", type=int, default=2, help="the K-client table's batch size per client")
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
    gpu = args.gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
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
            flops = model_flops(name, path, args)
            for checkpointing in settings:
                row = measure(name, path, args, checkpointing, flops)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.qlora == "on" and args.device.startswith("cuda"):
                row = measure(name, path, args, settings[-1], flops, quantization="4bit")
                rows.append(row)
                print(json.dumps(row), flush=True)
            elif args.qlora == "on":
                print(f"{name}: QLoRA (4-bit) skipped: bitsandbytes runs on CUDA only", flush=True)
            if args.clients:
                client_rows += measure_clients(name, path, args)
    print()
    header = (
        f"{'model':<14} {'base':>5} {'params':>7} {'trainable':>10} {'grad ckpt':>9} {'batch':>5} "
        f"{'s/step':>7} {'samples/s':>9} {'TFLOP/step':>10} {'MFU':>6} {'peak GPU MiB':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        peak = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        base = "nf4" if r["quantization"] == "4bit" else ("bf16" if args.device.startswith("cuda") else "fp32")
        print(
            f"{r['model']:<14} {base:>5} {r['parameters'] / 1e6:>6.0f}M {r['trainable']:>10,} "
            f"{'on' if r['gradient_checkpointing'] else 'off':>9} {r['batch_size']:>5} "
            f"{r['seconds_per_step']:>7.3f} {r['samples_per_s']:>9.1f} {r['tflops_per_step']:>10.3f} "
            f"{mfu:>6} {peak:>12}"
        )
    if client_rows:
        print()
        print_clients_table(client_rows)
    if args.json:
        args.json.write_text(json.dumps(rows + client_rows, indent=1))


if __name__ == "__main__":
    main()
