"""Wall time of the same job in-process and in NVIDIA FLARE's simulator, and FLARE's overhead.

Each job: the tiny LLaVA-shaped default, FedAvg, R rounds of K clients, 2 local steps of 4
samples per client, the global adapter evaluated on 16 rows per round. Both engines run the
same rounds (same seeds, same adapter); the FLARE run adds process startup (the simulator,
its server, one process per client, each loading the model) and per-round messaging.

Per round, the records' ``seconds.round`` (broadcast -> all replies -> aggregated ->
evaluated) are compared; "fixed" is the wall time outside the rounds (startup, the
setup task, shutdown, copying the run folder). FLARE clients train in parallel processes
(the cores split among them); the in-process engine trains them one after the other, so
on more cores the FLARE rounds can be shorter than in-process ones.

Also run: FLARE with its stock timings (task request interval 2 s, controller task check
0.5 s, in-process Client API polling 0.5 s) against fedumm's settings (0.1 s, 0.05 s,
0.05 s), to show what the tuning buys.

    python bench/engines.py                      # 2 and 8 clients, 3 rounds, best of 2
    python bench/engines.py --clients 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout need not be installed


def job(model_path: str, out: Path, name: str, clients: int, rounds: int, *extra: str):
    from fedumm.validation import load_run_config

    return load_run_config(
        None,
        [
            f"name={name}",
            f"model.name_or_path={model_path}",
            "model.device=cpu",
            f"federation.num_clients={clients}",
            f"federation.rounds={rounds}",
            f"data.synthetic.train_samples={30 * clients}",
            "data.synthetic.test_samples=16",
            "data.partition.alpha=0",
            "data.partition.min_samples=4",
            "train.batch_size=4",
            "train.local_steps=2",
            "eval.batch_size=16",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={out}",
            *extra,
        ],
    )


def measure(config) -> dict:
    from fedumm.engines.nvflare import simulate_nvflare
    from fedumm.engines.simulation import simulate

    start = time.perf_counter()
    result = simulate_nvflare(config) if config.engine.name == "nvflare" else simulate(config)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["seconds"]["round"] for r in records if r["round"] > 0]
    summary = result.summary
    return {
        "wall": wall,
        "rounds": rounds,
        "round": sum(rounds) / len(rounds),
        "fixed": wall - sum(rounds),
        "state": result.federated.final_state,
        "payload": summary["adapter_message_bytes"],
        "wire": summary.get("nvflare_message_bytes"),
        "per_round_bytes": summary["bytes_per_round"],
        # Whole FLARE messages of a round, as FLARE's server serialized them (records' nvflare_bytes).
        "wire_per_round": max((r["nvflare_bytes"]["total"] for r in records if "nvflare_bytes" in r), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each job; the fastest counts (the machine may be shared)"
    )
    parser.add_argument("--no-stock", action="store_true", help="skip the FLARE-stock-timings run")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads of every training process, both engines (0 = torch's default). "
        "On a small shared machine more threads than free cores make OpenMP spin: "
        "2 threads on 2 busy cores ran these in-process rounds 30x slower here",
    )
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    threads = []
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
        threads = [f"engine.torch_threads={args.torch_threads}"]

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="fedumm-bench-") as tmp:
        os.environ.setdefault("FEDUMM_CACHE", str(Path(tmp) / "cache"))
        from fedumm.models.tiny import resolve_model_path

        model = resolve_model_path("tiny-llava")
        out = Path(tmp) / "runs"
        measure(job(model, out, "warm-up", 2, 1))  # first-run costs (lazy torch init, caches) off the clock
        rows = []
        for k in args.clients:
            runs = [
                ("in-process", job(model, out, f"inproc-{k}", k, args.rounds)),
                ("nvflare simulator", job(model, out, f"flare-{k}", k, args.rounds, "engine.name=nvflare", *threads)),
            ]
            if not args.no_stock and k == min(args.clients):
                runs.append(
                    (
                        "nvflare, stock timings",
                        job(
                            model,
                            out,
                            f"flare-stock-{k}",
                            k,
                            args.rounds,
                            "engine.name=nvflare",
                            *threads,
                            "engine.task_request_interval=2",
                            "engine.task_check_period=0.5",
                            "engine.client_poll_interval=0.5",
                        ),
                    )
                )
            results = {}
            for rep in range(args.repeat):  # interleaved, so a busy spell hits every engine alike
                for label, config in runs:
                    config = config.model_copy(deep=True)
                    config.output.name = f"{config.name}-{rep}"
                    r = measure(config)
                    best = results.get(label)
                    results[label] = r if best is None or r["wall"] < best["wall"] else best
            base = results["in-process"]
            for label, r in results.items():
                diff = max((r["state"][key] - base["state"][key]).abs().max().item() for key in base["state"])
                rows.append((k, label, r, r["round"] - base["round"], diff))

        print(
            f"{os.cpu_count()} CPU cores; {args.rounds} rounds; tiny LLaVA-shaped model, 2 local steps x 4 samples; "
            f"best of {args.repeat}; torch threads per process: {args.torch_threads or 'default'}"
        )
        print(
            f"{'clients':>7}  {'engine':<24}{'wall s':>8}{'rounds s':>10}{'s/round':>9}"
            f"{'overhead s/round':>18}{'fixed s':>9}{'max |Δ adapter|':>17}"
        )
        for k, label, r, overhead, diff in rows:
            over = "-" if label == "in-process" else f"{overhead:+.2f}"
            print(
                f"{k:>7}  {label:<24}{r['wall']:>8.1f}{sum(r['rounds']):>10.1f}{r['round']:>9.2f}"
                f"{over:>18}{r['fixed']:>9.1f}{diff:>17.1e}"
            )
        print()
        for k, label, r, _, _ in rows:
            if r["wire"]:
                print(
                    f"{k} clients, {label}: payload {r['payload']:,} B per message; FLARE message "
                    f"{r['wire']['download']:,} B down / {r['wire']['upload']:,} B up; "
                    f"{r['per_round_bytes']:,} B payload / {r['wire_per_round']:,} B FLARE messages per round"
                )


if __name__ == "__main__":
    main()
