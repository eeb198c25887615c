"""Every aggregation strategy on the default task at Dirichlet alpha 0.1 and 1.0.

Runs the quickstart job (configs/quickstart.yaml: synthetic VQA, 4 clients, LoRA on the tiny
LLaVA-shaped model) federated only, once per (strategy, alpha), in-process with ``simulate``,
each strategy with its default hyperparameters, and prints: final global VQA accuracy, best
accuracy (and its round), and the first round whose global accuracy reaches --target.

To fit about 25 minutes on 2 CPU cores the defaults differ from the quickstart (printed at
start): 8 rounds instead of 12, 200 global test questions instead of 400, no centralized
baseline, and client-side evaluation (eval.clients) only for quality_weighted, which needs the
clients' local scores (evaluation does not change training, so the other runs are unaffected).
One base model is loaded once and shared by all runs (each run starts from the same initial
adapter); run folders go to a temporary directory (kept with --keep).

    python bench/algorithms.py
    python bench/algorithms.py --rounds 12 --strategies fedavg fedadam krum --alphas 0.5
    python bench/algorithms.py --strategies fedavgm fedadam --param fedavgm.momentum=0.5 --param fedadam.eta=0.05
    python bench/algorithms.py --strategies fedadam fedyogi --sweep eta=0.003,0.01,0.03,0.1 --alphas 0.1
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
NEEDS_CLIENT_EVAL = {"quality_weighted"}  # aggregates with the clients' local validation scores


def parse_args(available: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="federation.rounds (quickstart: 12)")
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=available,
        metavar="NAME",
        help=f"strategies to run (default: all registered: {' '.join(available)})",
    )
    parser.add_argument(
        "--alphas", nargs="+", type=float, default=[0.1, 1.0], help="Dirichlet alphas (data.partition.alpha; 0 = IID)"
    )
    parser.add_argument("--target", type=float, default=0.45, help="global VQA accuracy to reach")
    parser.add_argument("--test-samples", type=int, default=200, help="data.synthetic.test_samples (quickstart: 400)")
    parser.add_argument("--config", default=str(QUICKSTART), help="base config (default: the quickstart)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (repeatable)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="STRATEGY.KEY=VALUE",
        help="hyperparameter for one strategy's runs, e.g. fedavgm.momentum=0.5 (repeatable)",
    )
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="KEY=V1,V2,...",
        help="run each strategy once per value of its param KEY (one table row each), e.g. eta=0.01,0.1",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args()
    unknown = [s for s in args.strategies if s not in available]
    if unknown:
        parser.error(f"unknown strategies {unknown}; available: {' '.join(available)}")
    args.strategy_params = {}
    for item in args.param:
        name, dot, setting = item.partition(".")
        if not dot or "=" not in setting or name not in available:
            parser.error(f"--param {item!r}: expected STRATEGY.KEY=VALUE with STRATEGY one of {' '.join(available)}")
        args.strategy_params.setdefault(name, []).append(f"federation.strategy.{setting}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    # Runs: (row label, strategy, its overrides); --sweep makes one run per value.
    args.runs = []
    for name in args.strategies:
        base = args.strategy_params.get(name, [])
        if args.sweep is None:
            args.runs.append((name, name, base))
            continue
        key, eq, values = args.sweep.partition("=")
        if not eq or not key or not values:
            parser.error(f"--sweep {args.sweep!r}: expected KEY=V1,V2,...")
        for value in values.split(","):
            args.runs.append((f"{name} {key}={value}", name, [*base, f"federation.strategy.{key}={value}"]))
    return args


def rounds_to_target(accuracies: list[float], target: float) -> str:
    """First round (1-based; round 0 is the untrained adapter) with accuracy >= target."""
    for round_num, acc in enumerate(accuracies):
        if round_num > 0 and acc >= target:
            return str(round_num)
    return "-"


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    from fedumm.errors import FedummError
    from fedumm.strategies import STRATEGIES

    args = parse_args(list(STRATEGIES))
    try:
        run_all(args)
    except FedummError as exc:  # a bad --set / --param: one line, like the CLI
        sys.exit(f"error: {exc}")


def run_all(args: argparse.Namespace) -> None:
    from fedumm.engines.simulation import simulate
    from fedumm.federation import ModelHost
    from fedumm.strategies import validate_params
    from fedumm.validation import load_run_config

    common = [
        f"federation.rounds={args.rounds}",
        f"data.synthetic.test_samples={args.test_samples}",
        "eval.centralized_baseline=false",
        "output.progress=false",
        *args.set,
    ]
    base = load_run_config(args.config, common)
    print(f"base config: {args.config}")
    print(
        f"changed for the bench: {', '.join(common)}; eval.clients=false except for "
        f"{', '.join(sorted(NEEDS_CLIENT_EVAL))}; per run: federation.strategy.name, data.partition.alpha"
    )
    model_name = base.model.name_or_path or f"({base.model.backend} built-in tiny)"
    print(
        f"task: {base.federation.num_clients} clients, {base.data.synthetic.train_samples} train / "
        f"{base.data.synthetic.test_samples} test questions, {base.train.optimizer} lr {base.train.lr}, "
        f"batch {base.train.batch_size}, "
        f"{base.train.local_epochs} local epoch(s), model {model_name} "
        f"on {base.model.device}"
    )
    for label, name, extra in args.runs:  # resolved params; a bad --param fails here, before any run
        strategy = load_run_config(
            args.config, common + [f"federation.strategy.name={name}", *extra]
        ).federation.strategy
        params = validate_params(name, strategy.params()).model_dump()
        print(f"  {label}: {', '.join(f'{k}={v}' for k, v in params.items()) or '(no params)'}")

    host = ModelHost(base)  # one base model for every run; each run starts from host.initial_state
    rows = []
    started = time.perf_counter()
    out = tempfile.mkdtemp(prefix="fedumm-bench-algorithms-")
    print(f"run folders: {out}{'' if args.keep else ' (deleted at the end; --keep keeps them)'}")
    try:
        for alpha in args.alphas:
            for run_index, (label, name, extra) in enumerate(args.runs):
                overrides = (
                    common
                    + extra
                    + [
                        f"federation.strategy.name={name}",
                        f"data.partition.alpha={alpha}",
                        f"eval.clients={'true' if name in NEEDS_CLIENT_EVAL else 'false'}",
                        f"output.dir={out}",
                        f"output.name={name}-{run_index}-alpha{alpha}",
                    ]
                )
                t0 = time.perf_counter()
                try:
                    result = simulate(load_run_config(args.config, overrides), host=host)
                except Exception as exc:  # one failing strategy should not lose the others' rows
                    rows.append((label, alpha, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0))
                    print(f"  {label} alpha={alpha}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    continue
                accs = [r["global"]["vqa_accuracy"] for r in result.federated.records]
                seconds = time.perf_counter() - t0
                rows.append((label, alpha, accs, None, seconds))
                print(
                    f"  {label} alpha={alpha}: " + " ".join(f"{a:.3f}" for a in accs) + f"  ({seconds:.0f}s)",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(
        f"global VQA accuracy after {args.rounds} rounds (round 0 = untrained adapter); "
        f"target {args.target:.2f}; total {(time.perf_counter() - started) / 60:.1f} min"
    )
    to_target = f"rounds to {args.target:.2f}"
    width = max([17, *(len(label) for label, _, _ in args.runs)])
    header = (
        f"{'strategy':<{width}} {'alpha':>5}  {'final':>6}  {'best':>6} {'(round)':>7}  {to_target:>15}  {'seconds':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, alpha, accs, error, seconds in rows:
        if accs is None:
            print(f"{name:<{width}} {alpha:>5}  failed: {error}")
            continue
        best_round = max(range(len(accs)), key=lambda r: (accs[r], -r))
        final = accs[-1]
        final_s = f"{final:.3f}" if math.isfinite(final) else "nan"
        print(
            f"{name:<{width}} {alpha:>5}  {final_s:>6}  {accs[best_round]:>6.3f} {f'({best_round})':>7}  "
            f"{rounds_to_target(accs, args.target):>15}  {seconds:>7.0f}"
        )


if __name__ == "__main__":
    main()
