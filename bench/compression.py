"""Compressed updates on the default task: upload bytes per client and round, and final global
accuracy, for fp32, fp16, int8, int4 and top-k 10% / 1% (with and without error feedback).

Runs the quickstart job (configs/quickstart.yaml: synthetic VQA, 4 clients, LoRA r=16 on the
tiny LLaVA-shaped model, FedAvg, seed 42, 12 rounds) federated only, once per row, in-process
with ``simulate``; every row has the same seed, data split and initial adapter, and differs
only in ``federation.compression`` and ``federation.wire_dtype`` (``--seeds`` repeats every row
per seed and reports the mean and spread). Changed from the quickstart
for the bench (printed at start): no centralized baseline, no client-side evaluation (neither
changes training). One base model is shared by all runs; run folders go to a temporary
directory (kept with --keep). Prints a Markdown table with each row's upload bytes relative to
fp32's, and the issue's acceptance check for int8 (<= 0.27x fp32 bytes, accuracy within 1 point).

    python bench/compression.py                      # every row, 12 rounds
    python bench/compression.py --rounds 2 --rows int8 topk10-ef   # a quick look (fp32 always runs)
    python bench/compression.py --rows fp16 int8 int8-fp16 --seeds 42 43 44   # the spread over seeds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"

_C = "federation.compression"
#: row name (--rows) -> (its label in the table, its overrides).
ROWS: dict[str, tuple[str, list[str]]] = {
    "fp32": ("fp32", ["federation.wire_dtype=float32"]),
    "fp16": ("fp16", ["federation.wire_dtype=float16"]),
    "int8": ("int8", [f"{_C}.codec=int8"]),
    "int8-ef": ("int8 + EF", [f"{_C}.codec=int8", f"{_C}.error_feedback=true"]),
    "int8-fp16": ("int8, fp16 scales", [f"{_C}.codec=int8", "federation.wire_dtype=float16"]),
    "int4": ("int4", [f"{_C}.codec=int4"]),
    "int4-ef": ("int4 + EF", [f"{_C}.codec=int4", f"{_C}.error_feedback=true"]),
    "topk10": ("top-k 10%", [f"{_C}.codec=topk", f"{_C}.topk_fraction=0.1"]),
    "topk10-ef": ("top-k 10% + EF", [f"{_C}.codec=topk", f"{_C}.topk_fraction=0.1", f"{_C}.error_feedback=true"]),
    "topk1": ("top-k 1%", [f"{_C}.codec=topk", f"{_C}.topk_fraction=0.01"]),
    "topk1-ef": ("top-k 1% + EF", [f"{_C}.codec=topk", f"{_C}.topk_fraction=0.01", f"{_C}.error_feedback=true"]),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="federation.rounds (quickstart: 12)")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(ROWS),
        metavar="ROW",
        help=f"rows to run (fp32 is always run first: the reference); of {' '.join(ROWS)}",
    )
    parser.add_argument("--config", default=str(QUICKSTART), help="base config (default: the quickstart)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="run every row once per seed (data split, training order, stochastic rounding; the initial "
        "adapter stays the one of the config's seed) and report the mean and spread (default: the config's seed)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; available: {' '.join(ROWS)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    args.names = ["fp32", *(r for r in dict.fromkeys(args.rows) if r != "fp32")]
    return args


def upload_per_client(records: list[dict]) -> float:
    """Mean bytes one client uploaded per round (every reply of rounds 1..R)."""
    sizes = [size for r in records if r["round"] > 0 for size in r["bytes"]["upload"].values()]
    return statistics.fmean(sizes)


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    from fedumm.engines.simulation import simulate
    from fedumm.errors import FedummError
    from fedumm.federation import ModelHost
    from fedumm.validation import load_run_config

    args = parse_args()
    common = [
        f"federation.rounds={args.rounds}",
        "eval.centralized_baseline=false",
        "eval.clients=false",
        "output.progress=false",
        *args.set,
    ]
    try:
        base = load_run_config(args.config, common)
        configs = {name: load_run_config(args.config, common + ROWS[name][1]) for name in args.names}
    except FedummError as exc:  # a bad --set: one line, like the CLI
        sys.exit(f"error: {exc}")
    print(f"base config: {args.config}, seed {base.seed}; changed for the bench: {', '.join(common)}")
    print(
        f"task: {base.federation.num_clients} clients, {base.data.synthetic.train_samples} train / "
        f"{base.data.synthetic.test_samples} test questions, {base.federation.strategy.name}, "
        f"{base.train.optimizer} lr {base.train.lr}, {base.train.local_epochs} local epoch(s)"
    )
    host = ModelHost(base)  # one base model for every run; each run starts from host.initial_state
    seeds = args.seeds or [base.seed]
    out = tempfile.mkdtemp(prefix="fedumm-bench-compression-")
    print(f"run folders: {out}{'' if args.keep else ' (deleted at the end; --keep keeps them)'}")
    uploads: dict[str, list[float]] = {name: [] for name in args.names}
    finals: dict[str, list[float]] = {name: [] for name in args.names}
    started = time.perf_counter()
    try:
        for seed in seeds:
            for index, name in enumerate(args.names):
                label, config = ROWS[name][0], configs[name].model_copy(deep=True)
                config.seed = seed
                config.output.dir, config.output.name = out, f"row{index}-seed{seed}"
                t0 = time.perf_counter()
                records = simulate(config, host=host).federated.records
                accs = [r["global"]["vqa_accuracy"] for r in records]
                uploads[name].append(upload_per_client(records))
                finals[name].append(accs[-1])
                print(
                    f"  seed {seed} {label}: accuracy " + " ".join(f"{a:.3f}" for a in accs) + f"; "
                    f"{uploads[name][-1]:,.0f} B/client/round ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    reference_bytes = statistics.fmean(uploads["fp32"])
    print()
    print(
        f"{args.rounds} rounds, seed(s) {' '.join(map(str, seeds))}; upload = mean bytes per client per round "
        f"(the encoded reply payload); accuracy = final global VQA accuracy"
        + (", mean ± std over the seeds; Δ = mean of the per-seed differences" if len(seeds) > 1 else "")
        + f"; {(time.perf_counter() - started) / 60:.1f} min"
    )
    print()
    print("| run | codec | wire dtype | error feedback | upload B/client/round | × fp32 | final accuracy | Δ vs fp32 |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    deltas = {}
    for name in args.names:
        label, config = ROWS[name][0], configs[name]
        comp = config.federation.compression
        codec = comp.codec if comp.codec != "topk" else f"topk {comp.topk_fraction:g}"
        upload, accs = statistics.fmean(uploads[name]), finals[name]
        spread = f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else ""
        deltas[name] = statistics.fmean(100 * (a - b) for a, b in zip(accs, finals["fp32"], strict=True))
        print(
            f"| {label} | {codec} | {config.federation.wire_dtype} | {'yes' if comp.error_feedback else 'no'} | "
            f"{upload:,.0f} | {upload / reference_bytes:.3f} | {statistics.fmean(accs):.3f}{spread} | "
            f"{deltas[name]:+.1f} pt |"
        )
    for name in args.names:
        if name.startswith("int8"):
            ratio = statistics.fmean(uploads[name]) / reference_bytes
            print(
                f"acceptance, {ROWS[name][0]}: bytes {ratio:.3f}x fp32 ({'<=' if ratio <= 0.27 else '>'} 0.27), "
                f"accuracy {deltas[name]:+.1f} points ({'within' if abs(deltas[name]) <= 1 else 'outside'} 1 point)"
            )


if __name__ == "__main__":
    main()
