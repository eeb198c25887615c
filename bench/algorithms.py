"""Every aggregation strategy on the default task at Dirichlet alpha 0.1 and 1.0, over seeds.

Runs the quickstart job (configs/quickstart.yaml: synthetic VQA, 4 clients, LoRA on the tiny
LLaVA-shaped model) federated only, once per (strategy, alpha, seed), through ``fedumm sweep``'s
machinery (``fedumm.sweep``: each run is ``fedumm run`` in its own process, into one sweep
folder; finished runs are skipped when the same command runs again with the same --out), each
strategy with its default hyperparameters, and prints the sweep's table: final and best global
VQA accuracy as mean ± std over the seeds, and the rounds to reach --target (mean over the runs
that reached it, and how many did).

The defaults differ from the quickstart (printed at start) to fit 2 CPU cores: 8 rounds instead
of 12, 200 global test questions instead of 400, no centralized baseline, and client-side
evaluation (eval.clients) only for quality_weighted, which needs the clients' local scores
(evaluation does not change training, so the other runs are unaffected). Seeds are the config's
seed and the next ones (``seed``: the data partition, initial adapter, shuffling all change).

    python bench/algorithms.py                       # 11 strategies x 2 alphas x 3 seeds
    python bench/algorithms.py --out bench-runs/algorithms   # resumable: run it again to finish
    python bench/algorithms.py --seeds 1 --rounds 12 --strategies fedavg fedadam krum --alphas 0.5
    python bench/algorithms.py --strategies fedavgm fedadam --param fedavgm.momentum=0.5 --param fedadam.eta=0.05
    python bench/algorithms.py --strategies fedadam fedyogi --sweep eta=0.003,0.01,0.03,0.1 --alphas 0.1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
NEEDS_CLIENT_EVAL = {"quality_weighted"}  # aggregates with the clients' local validation scores


def parse_args(available: list[str], default: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    others = sorted(set(available) - set(default))
    parser.add_argument("--rounds", type=int, default=8, help="federation.rounds (quickstart: 12)")
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=default,
        metavar="NAME",
        help=f"strategies to run (default: {' '.join(default)}; also: {' '.join(others)})",
    )
    parser.add_argument(
        "--alphas", nargs="+", type=float, default=[0.1, 1.0], help="Dirichlet alphas (data.partition.alpha; 0 = IID)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs per (strategy, alpha): seed, seed+1, ...")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (they share the cores)")
    parser.add_argument("--target", type=float, default=0.45, help="global VQA accuracy to reach")
    parser.add_argument("--test-samples", type=int, default=200, help="data.synthetic.test_samples (quickstart: 400)")
    parser.add_argument("--config", default=str(QUICKSTART), help="base config (default: the quickstart)")
    parser.add_argument(
        "--out",
        default=None,
        help="the sweep folder (kept, and resumable); default: a temporary folder deleted at the end",
    )
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
    if args.rounds < 1 or args.seeds < 1:
        parser.error("--rounds and --seeds must be >= 1")
    # One grid per strategy: its name, the swept param's values (--sweep) and the alphas.
    swept: list[tuple[str, list[str]]] = []
    if args.sweep is not None:
        key, eq, values = args.sweep.partition("=")
        if not eq or not key or not values:
            parser.error(f"--sweep {args.sweep!r}: expected KEY=V1,V2,...")
        swept = [(f"federation.strategy.{key}", values.split(","))]
    args.grids = {
        name: [("federation.strategy.name", [name]), *swept, ("data.partition.alpha", args.alphas)]
        for name in args.strategies
    }
    return args


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    from fedumm.errors import FedummError
    from fedumm.strategies import STRATEGIES

    rounds_mode = [n for n, s in STRATEGIES.items() if "rounds" in s.modes and not s.rank_aware]
    args = parse_args([n for n, s in STRATEGIES.items() if "rounds" in s.modes], rounds_mode)
    try:
        run_all(args)
    except FedummError as exc:  # a bad --set / --param / grid value: one line, like the CLI
        sys.exit(f"error: {exc}")


def run_all(args: argparse.Namespace) -> None:
    from fedumm.strategies import validate_params
    from fedumm.sweep import plan_sweep, run_sweep, write_sweep_tables
    from fedumm.validation import load_run_config

    common = [
        f"federation.rounds={args.rounds}",
        f"data.synthetic.test_samples={args.test_samples}",
        "eval.centralized_baseline=false",
        *args.set,
    ]
    base = load_run_config(args.config, common)
    print(f"base config: {args.config}")
    print(
        f"changed for the bench: {', '.join(common)}; eval.clients=false except for "
        f"{', '.join(sorted(NEEDS_CLIENT_EVAL))}; per run: federation.strategy.name, data.partition.alpha, seed "
        f"({base.seed}..{base.seed + args.seeds - 1})"
    )
    model_name = base.model.name_or_path or f"({base.model.backend} built-in tiny)"
    print(
        f"task: {base.federation.num_clients} clients, {base.data.synthetic.train_samples} train / "
        f"{base.data.synthetic.test_samples} test questions, {base.train.optimizer} lr {base.train.lr}, "
        f"batch {base.train.batch_size}, {base.train.local_epochs} local epoch(s), model {model_name} "
        f"on {base.model.device}"
    )
    for name in args.strategies:  # resolved params; a bad --param fails here, before any run
        extra = args.strategy_params.get(name, [])
        strategy = load_run_config(
            args.config, [*common, f"federation.strategy.name={name}", *extra]
        ).federation.strategy
        params = validate_params(name, strategy.params()).model_dump()
        print(f"  {name}: {', '.join(f'{k}={v}' for k, v in params.items()) or '(no params)'}")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fedumm-bench-algorithms-"))
    print(f"sweep folder: {out}{'' if args.out else ' (deleted at the end; --out keeps it, resumable)'}")
    started = time.perf_counter()
    try:
        runs = []
        for name, grid in args.grids.items():
            client_eval = f"eval.clients={'true' if name in NEEDS_CLIENT_EVAL else 'false'}"
            runs += plan_sweep(
                args.config, [*common, *args.strategy_params.get(name, []), client_eval], grid, args.seeds, out
            )
        result = run_sweep(args.config, runs, out, jobs=args.jobs, log=lambda line: print(line, flush=True))
        table = write_sweep_tables(result, out, args.target)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print()
    print(
        f"global VQA accuracy after {args.rounds} rounds, mean ± std over {args.seeds} seed(s); "
        f"target {args.target:.2f}; {len(result.rows)} runs read, {len(result.failed)} failed; "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    print(table)
    for name, log in result.failed.items():
        print(f"FAILED {name}: see {log}")


if __name__ == "__main__":
    main()
