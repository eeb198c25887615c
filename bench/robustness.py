"""Robustness table: aggregation strategies x attacks, one of eight clients attacking.

Runs the quickstart task (synthetic VQA, tiny LLaVA-shaped model, LoRA) federated only, with 8
clients at Dirichlet alpha 1.0, once per (strategy, attack), in-process with ``simulate``, the
attacker being client 0 from round 1 (``federation.attack``). Every reply goes through the
round loop's checks (``federation.replies``), so NaN payloads and inflated sample counts are
rejected whatever the strategy; ``fedavg+norm`` adds ``federation.validation.max_update_norm=auto``.
Prints the final global VQA accuracy per cell, the replies rejected over the run, and checks
that no run crashed or ended with a non-finite adapter (a cell shows ERR otherwise).

One base model and one data split are shared by all runs; run folders go to a temporary
directory. Defaults sized for a 2-core CPU (printed at start).

    python bench/robustness.py
    python bench/robustness.py --rounds 6 --strategies fedavg median --attacks none scale
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
STRATEGIES = {
    "fedavg": [],
    "fedadam": ["federation.strategy.name=fedadam"],
    "scaffold": ["federation.strategy.name=scaffold"],
    "median": ["federation.strategy.name=median"],
    "trimmed_mean": ["federation.strategy.name=trimmed_mean"],
    "krum": ["federation.strategy.name=krum", "federation.strategy.f=1"],
    "fedavg+norm": ["federation.validation.max_update_norm=auto"],
}
ATTACKS = {
    "none": [],
    "nan": ["federation.attack.kind=nan"],
    "scale": ["federation.attack.kind=scale", "federation.attack.factor=1e6"],
    "sign_flip": ["federation.attack.kind=sign_flip"],
    "gaussian": ["federation.attack.kind=gaussian", "federation.attack.std=1.0"],
    "label_flip": ["federation.attack.kind=label_flip"],
    "inflate_samples": ["federation.attack.kind=inflate_samples"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--train-samples", type=int, default=1600)
    parser.add_argument("--test-samples", type=int, default=200)
    parser.add_argument("--local-steps", type=int, default=10)
    return parser.parse_args()


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    import torch

    from fedumm.data.federated import build_federated_data
    from fedumm.engines.simulation import simulate
    from fedumm.federation import ModelHost
    from fedumm.runlog import read_checkpoint
    from fedumm.validation import load_run_config

    args = parse_args()
    common = [
        "federation.num_clients=8",
        f"federation.rounds={args.rounds}",
        "data.partition.alpha=1.0",
        f"data.synthetic.train_samples={args.train_samples}",
        f"data.synthetic.test_samples={args.test_samples}",
        f"train.local_steps={args.local_steps}",
        "eval.clients=false",
        "eval.centralized_baseline=false",
        "output.progress=false",
        "federation.attack.clients=[0]",
    ]
    print(f"base: {QUICKSTART}; changed: {', '.join(common)}")
    base = load_run_config(QUICKSTART, common)
    data = build_federated_data(base.data, 8, base.seed, task=base.eval.task)
    host = ModelHost(base)
    results: dict[tuple[str, str], str] = {}
    rejected_total: dict[tuple[str, str], int] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedumm-robustness-") as out:
        for strategy in args.strategies:
            for attack in args.attacks:
                overrides = [
                    *common,
                    *STRATEGIES[strategy],
                    *ATTACKS[attack],
                    f"output.dir={out}",
                    f"output.name={strategy.replace('+', '_')}-{attack}",
                ]
                config = load_run_config(QUICKSTART, overrides)
                try:
                    result = simulate(config, host=host, data=data)
                    state = read_checkpoint(result.run_dir).global_state
                    finite = all(bool(torch.isfinite(t).all()) for t in state.values())
                    accuracy = result.federated.final_accuracy
                    results[strategy, attack] = f"{accuracy:.3f}" if finite and math.isfinite(accuracy) else "NONFIN"
                    rejected_total[strategy, attack] = sum(len(r.get("rejected", {})) for r in result.federated.records)
                except Exception as exc:  # the table shows the cell; the message says why
                    results[strategy, attack] = "ERR"
                    print(f"{strategy} x {attack}: {type(exc).__name__}: {exc}", file=sys.stderr)
                print(
                    f"  {strategy:>13} x {attack:<15} {results[strategy, attack]:>7} "
                    f"(rejected replies: {rejected_total.get((strategy, attack), '-')})",
                    flush=True,
                )
    print(
        f"\nfinal global vqa_accuracy, 1 of 8 clients attacking from round 1, {args.rounds} rounds "
        f"({time.perf_counter() - start:.0f} s)"
    )
    print("| strategy | " + " | ".join(args.attacks) + " |")
    print("|---|" + "---|" * len(args.attacks))
    for strategy in args.strategies:
        print(f"| {strategy} | " + " | ".join(results[strategy, a] for a in args.attacks) + " |")
    bad = [k for k, v in results.items() if v in ("ERR", "NONFIN")]
    print(f"runs that crashed or ended non-finite: {len(bad)}" + (f" {bad}" if bad else ""))


if __name__ == "__main__":
    main()
