"""Secure aggregation micro-benchmark: time and bytes per stage of ``secure_sum``.

In-process (``local_exchange``), so "clients" is the time all clients together spend answering a
stage (sequentially, one process) and "server" the server's own work before the stage (building
its messages, parsing the previous answers); "finish" is the unmasking after the last stage.
With ``--drop`` that many clients drop before ``masked_input``, so the server also recomputes
their pairwise masks. Wire bytes are what ``SecureSum.bytes_up`` / ``bytes_down`` count.

    python bench/secagg_micro.py
    python bench/secagg_micro.py --clients 8 32 64 --size 100000 --drop 2
"""

from __future__ import annotations

import argparse
import time


def run(n: int, size: int, n_drop: int, seed: int) -> None:
    import numpy as np

    from fedumm.privacy.secagg import STAGES, SecAggClient, SecAggParams, local_exchange, secure_sum

    rng = np.random.default_rng(seed)
    params = SecAggParams(clients=tuple(range(n)), threshold=n // 2 + 1, vector_size=size)
    vectors = {c: rng.normal(scale=0.1, size=size) for c in params.clients}
    clients = {c: SecAggClient(c, v) for c, v in vectors.items()}
    inner = local_exchange(clients, drop={"masked_input": set(range(1, 1 + n_drop))})
    client_s: dict[str, float] = {}
    server_s: dict[str, float] = {}
    mark = [time.perf_counter()]

    def timed(stage: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        start = time.perf_counter()
        server_s[stage] = start - mark[0]
        answers = inner(stage, messages)
        mark[0] = time.perf_counter()
        client_s[stage] = mark[0] - start
        return answers

    start = time.perf_counter()
    result = secure_sum(params, timed)
    end = time.perf_counter()
    finish = end - mark[0]
    error = float(np.max(np.abs(result.total - sum(vectors[c] for c in result.survivors))))

    print(f"\n{n} clients (t={params.threshold}, {n_drop} dropped), {size:,} floats, {params.quantization_bits} bits")
    print(f"{'stage':<15}{'server s':>10}{'clients s':>11}{'per client ms':>15}{'down B':>14}{'up B':>14}")
    for stage in STAGES:
        answered = n if stage in STAGES[:2] else len(result.survivors)  # who answered that stage
        print(
            f"{stage:<15}{server_s[stage]:>10.3f}{client_s[stage]:>11.3f}{1000 * client_s[stage] / answered:>15.1f}"
            f"{result.bytes_down[stage]:>14,}{result.bytes_up[stage]:>14,}"
        )
    print(f"{'finish':<15}{finish:>10.3f}")
    total_down, total_up = sum(result.bytes_down.values()), sum(result.bytes_up.values())
    print(f"{'total':<15}{end - start:>21.3f}{'':>15}{total_down:>14,}{total_up:>14,}")
    plain = n * size * 4
    print(
        f"max abs error {error:.2e} (bound {len(result.survivors) * params.step() / 2:.2e}); "
        f"upload {total_up / plain:.2f}x float32 updates"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--drop", type=int, default=0, help="clients that drop before masked_input")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for n in args.clients:
        run(n, args.size, args.drop, args.seed)


if __name__ == "__main__":
    main()
