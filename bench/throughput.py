"""Round wall time with the clients trained one after another vs together (``engine.parallel_clients``).

For each model and each client count K it runs one federated round (every client trains, replies
are checked and aggregated, the global model is evaluated) in both modes, alternating the modes
``--repeats`` times in one process on one loaded model, and prints: the round's wall time, the
clients' training time (the replies' ``train_seconds`` added up) and the share of the round that
is not local training (client-local and global evaluation, serialisation, aggregation), then the
sequential / vectorised ratio of the median round times. Models:

- ``tiny``: the quickstart (configs/quickstart.yaml: tiny LLaVA-shaped model, synthetic VQA,
  batch 16, one local epoch); its clients' rows split IID so every K gets its share;
- ``blip-vqa-base``: the real-size architecture of Salesforce/blip-vqa-base with random weights
  (``bench/gpu_train.py`` builds it, here in float32), ``--blip-steps`` local steps of batch
  ``--blip-batch`` per client at ``--blip-image-size`` px (384 is the real size; the default
  keeps a CPU run short).

``--full`` also runs the whole quickstart job (12 rounds, federated only) once per mode and prints
its wall time and final global accuracy (the acceptance check: same accuracy, same seed).

    python bench/throughput.py                       # tiny and blip-vqa-base, K = 4 and 16
    python bench/throughput.py --models tiny --clients 4 --repeats 5 --full
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def one_round(config, host, data, test, round_num: int) -> dict:
    """One round of the loop's steps on a fresh server; its timings."""
    from fedumm.federation import LocalTransport, Server
    from fedumm.finetune import plan_for_round

    server = Server.from_config(config, host.initial_state, len(data.clients))
    transport = LocalTransport(data.clients, host, config, server.strategy.client_algorithm(), data.partition)
    ids = transport.client_ids
    start = time.perf_counter()
    replies = transport.fit(ids, server.broadcast(round_num), round_num)
    fitted = time.perf_counter()
    keys = list(host.parameters_of(plan_for_round(config.finetune, round_num).shared))
    caps = {c.client_id: len(c.train) for c in data.clients}
    updates, rejected = server.check(replies, server.rules(keys, caps, host.evaluation))
    if rejected or not server.aggregate_updates(updates, round_num):
        sys.exit(f"round failed: {rejected or 'the aggregate is not finite'}")
    host.set_state(server.global_state)
    accuracy = host.evaluate(test, config.eval.batch_size)[host.evaluation.primary_metric]
    end = time.perf_counter()
    train = sum(r.metrics["train_seconds"] for r in replies)
    return {"round_s": end - start, "fit_s": fitted - start, "train_s": train, "accuracy": accuracy}


def measure(name: str, overrides: list[str], counts: list[int], repeats: int, config_path: Path | None) -> list[dict]:
    import torch

    from fedumm.data.federated import build_federated_data
    from fedumm.federation import ModelHost
    from fedumm.federation.job import eval_rows
    from fedumm.validation import load_run_config

    rows = []
    host = None
    for k in counts:
        base = [*overrides, f"federation.num_clients={k}"]
        configs = {
            mode: load_run_config(config_path, [*base, f"engine.parallel_clients={width}"])
            for mode, width in (("sequential", 1), ("vectorised", k))
        }
        config = configs["sequential"]
        data = build_federated_data(config.data, k, config.seed, task=config.eval.task)
        host = host or ModelHost(config)  # one model for every K and mode
        test = eval_rows(config, data.global_test)
        times: dict[str, list[dict]] = {"sequential": [], "vectorised": []}
        one_round(configs["vectorised"], host, data, test, 1)  # warm-up: allocator, kernels
        for _ in range(repeats):
            for mode in ("sequential", "vectorised"):
                torch.manual_seed(0)
                times[mode].append(one_round(configs[mode], host, data, test, 1))
        for mode, runs in times.items():
            best = statistics.median(r["round_s"] for r in runs)
            train = statistics.median(r["train_s"] for r in runs)
            row = {
                "model": name,
                "clients": k,
                "mode": mode,
                "round_s": best,
                "train_s": train,
                "not_training": 1 - train / best,
                "accuracy": runs[-1]["accuracy"],
                "all_round_s": [round(r["round_s"], 2) for r in runs],
            }
            rows.append(row)
            print(
                f"{name:<14} K={k:<3} {mode:<10} round {best:7.2f}s  training {train:7.2f}s  "
                f"not training {row['not_training']:5.1%}  rounds {row['all_round_s']}",
                flush=True,
            )
        seq, vec = rows[-2]["round_s"], rows[-1]["round_s"]
        print(f"{name:<14} K={k:<3} sequential / vectorised round time: {seq / vec:.2f}x", flush=True)
    return rows


def full_runs(out: Path) -> None:
    """The quickstart job, federated only, once per mode: wall time and final global accuracy."""
    from fedumm.engines.simulation import simulate
    from fedumm.validation import load_run_config

    for width in (1, 4):
        config = load_run_config(
            QUICKSTART,
            [
                f"engine.parallel_clients={width}",
                "eval.centralized_baseline=false",
                "output.progress=false",
                f"output.dir={out}",
                f"output.name=parallel{width}",
            ],
        )
        start = time.perf_counter()
        result = simulate(config)
        seconds = time.perf_counter() - start
        print(
            f"quickstart, 12 rounds, parallel_clients={width}: {seconds:.1f}s, final global accuracy "
            f"{result.federated.final_accuracy:.4f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["tiny", "blip-vqa-base"], default=["tiny", "blip-vqa-base"])
    parser.add_argument("--clients", nargs="+", type=int, default=[4, 16], help="client counts K")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per mode (median reported)")
    parser.add_argument("--blip-steps", type=int, default=2, help="blip-vqa-base: local steps per client")
    parser.add_argument("--blip-batch", type=int, default=2, help="blip-vqa-base: batch size")
    parser.add_argument("--blip-image-size", type=int, default=128, help="blip-vqa-base: image side (real: 384)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--full", action="store_true", help="also run the whole quickstart job in both modes")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} rounds per mode")
    with tempfile.TemporaryDirectory(prefix="fedumm-throughput-") as tmp:
        common = ["eval.centralized_baseline=false", "output.progress=false", f"output.dir={tmp}"]
        if "tiny" in args.models:
            tiny = [*common, "data.partition.alpha=0", "model.device=cpu"]
            measure("tiny", tiny, args.clients, args.repeats, QUICKSTART)
        if "blip-vqa-base" in args.models:
            from gpu_train import save_checkpoint

            path = Path(tmp) / "blip-vqa-base"
            count = save_checkpoint("blip-vqa-base", path, smoke=False, device="cpu", image_size=args.blip_image_size)
            print(f"blip-vqa-base: {count / 1e6:.0f}M parameters, float32, {args.blip_image_size} px", flush=True)
            blip = [
                *common,
                "model.backend=blip_vqa",
                f"model.name_or_path={path}",
                "model.device=cpu",
                "model.max_new_tokens=3",
                "adapter.preset=qv_self",
                "adapter.dropout=0",
                f"train.local_steps={args.blip_steps}",
                f"train.batch_size={args.blip_batch}",
                "train.lr=1e-4",
                "data.partition.alpha=0",
                "data.partition.min_samples=2",
                "data.synthetic.train_samples=320",
                "data.synthetic.test_samples=16",
                "data.local_test_fraction=0",
                "eval.clients=false",
            ]
            measure("blip-vqa-base", blip, args.clients, args.repeats, None)
        if args.full:
            full_runs(Path(tmp))


if __name__ == "__main__":
    main()
