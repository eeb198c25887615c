"""What privacy costs on the default task: accuracy under client-level DP, and the time and
bytes of secure aggregation.

Part 1 runs the quickstart job (synthetic VQA, LoRA on the tiny LLaVA-shaped model) with 32
clients, federated only, as central DP-FedAvg at epsilon = inf (clipping only), 8, 3 and 1
(delta 1e-5; Poisson sampling at --rate; the noise multiplier picked by privacy.target_epsilon
for the planned rounds), next to the same job without DP, and prints the final and best global
VQA accuracy and the epsilon spent.

Part 2 runs the same job for --secagg-rounds rounds with 8 and 32 clients (every client every
round), plain and with privacy.secure_aggregation (threshold: half the clients + 1), and prints
the mean round time, the bytes per round and the protocol's own share of both.

One base model is loaded once and shared by all runs; run folders go to a temporary directory.

    python bench/privacy.py
    python bench/privacy.py --rounds 8 --epsilons 8 1 --skip-secagg
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="federation.num_clients of part 1")
    parser.add_argument("--rounds", type=int, default=12, help="federation.rounds of part 1")
    parser.add_argument("--rate", type=float, default=0.5, help="Poisson rate q (federation.fraction_fit) under DP")
    parser.add_argument("--clip", type=float, default=1.0, help="privacy.clip_norm")
    parser.add_argument("--epsilons", nargs="+", type=float, default=[8.0, 3.0, 1.0], help="target epsilons")
    parser.add_argument("--test-samples", type=int, default=200, help="data.synthetic.test_samples")
    parser.add_argument("--secagg-clients", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--secagg-rounds", type=int, default=3)
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--skip-secagg", action="store_true")
    return parser.parse_args()


def _records(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def dp_table(args, host, out: Path, load_run_config, simulate) -> None:
    base = [
        f"federation.num_clients={args.clients}",
        f"federation.rounds={args.rounds}",
        f"data.synthetic.test_samples={args.test_samples}",
        "eval.centralized_baseline=false",
        "eval.clients=false",
        "output.progress=false",
        f"output.dir={out}",
    ]
    dp = [f"federation.fraction_fit={args.rate}", "privacy.level=client", f"privacy.clip_norm={args.clip}"]
    runs = [("no DP (all clients each round)", [])]
    runs.append(("DP, eps = inf (clip only)", [*dp, "privacy.noise_multiplier=0"]))
    runs += [(f"DP, eps = {e:g}", [*dp, f"privacy.target_epsilon={e}"]) for e in args.epsilons]
    print(f"\n{args.clients} clients, {args.rounds} rounds, q = {args.rate} under DP, C = {args.clip}, delta = 1e-5")
    print(f"{'run':32} {'z':>7} {'epsilon':>8} {'final acc':>10} {'best acc':>9} {'seconds':>8}")
    for i, (label, extra) in enumerate(runs):
        config = load_run_config(QUICKSTART, [*base, *extra, f"output.name=dp{i}"])
        start = time.perf_counter()
        result = simulate(config, host=host)
        seconds = time.perf_counter() - start
        accs = [r["global"]["vqa_accuracy"] for r in _records(result.run_dir)[1:]]
        privacy = result.summary.get("privacy", {})
        z = privacy.get("noise_multiplier")
        eps = privacy.get("epsilon")
        print(
            f"{label:32} {'-' if z is None else f'{z:.3f}':>7} {'-' if eps is None else f'{eps:.3g}':>8} "
            f"{accs[-1]:>10.3f} {max(accs):>9.3f} {seconds:>8.1f}",
            flush=True,
        )


def secagg_table(args, host, out: Path, load_run_config, simulate) -> None:
    print(f"\nsecure aggregation, {args.secagg_rounds} rounds, every client every round")
    print(
        f"{'clients':>7} {'plain s/round':>13} {'secure s/round':>14} {'ratio':>6} {'protocol s':>10} "
        f"{'plain KiB/round':>15} {'secure KiB/round':>16} {'ratio':>6}"
    )
    for clients in args.secagg_clients:
        rows = {}
        for mode, extra in (
            ("plain", []),
            ("secure", [f"privacy.secure_aggregation={{threshold: {clients // 2 + 1}}}"]),
        ):
            config = load_run_config(
                QUICKSTART,
                [
                    f"federation.num_clients={clients}",
                    f"federation.rounds={args.secagg_rounds}",
                    f"data.synthetic.test_samples={args.test_samples}",
                    "eval.centralized_baseline=false",
                    "eval.clients=false",
                    "output.progress=false",
                    f"output.dir={out}",
                    f"output.name=sa{clients}{mode}",
                    *extra,
                ],
            )
            records = _records(simulate(config, host=host).run_dir)[1:]
            rows[mode] = (
                statistics.mean(r["seconds"]["round"] - r["seconds"]["global_eval"] for r in records),
                statistics.mean(r["bytes"]["total"] for r in records) / 1024,
                statistics.mean(r.get("secure_aggregation", {}).get("seconds", 0.0) for r in records),
            )
        (ps, pb, _), (ss, sb, proto) = rows["plain"], rows["secure"]
        print(
            f"{clients:>7} {ps:>13.2f} {ss:>14.2f} {ss / ps:>6.2f} {proto:>10.2f} "
            f"{pb:>15.0f} {sb:>16.0f} {sb / pb:>6.2f}",
            flush=True,
        )
    print("(s/round: client training + aggregation, without the server's evaluation; one process on this machine)")


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from fedumm.engines.simulation import simulate
    from fedumm.federation import ModelHost
    from fedumm.validation import load_run_config

    host = ModelHost(load_run_config(QUICKSTART, ["output.progress=false"]))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_dp:
            dp_table(args, host, Path(tmp), load_run_config, simulate)
        if not args.skip_secagg:
            secagg_table(args, host, Path(tmp), load_run_config, simulate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
