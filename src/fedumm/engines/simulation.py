"""In-process simulation: ONE frozen base model per process; each client is an adapter state
swapped in and out of it, so memory grows only by the adapters, not by model copies.

``simulate`` runs the federated job and, when ``eval.centralized_baseline`` is set, the
centralized baseline on the same base model with the same trainer and budget.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from fedumm.adapters import check_state_matches, full_model_nbytes
from fedumm.config import RunConfig, StrategyConfig
from fedumm.data.partition import save_partition_heatmap
from fedumm.data.federated import ClientData, FederatedData, build_federated_data
from fedumm.evaluate import majority_answer, vqa_accuracy
from fedumm.task_metrics import PRIMARY_METRIC, accuracy
from fedumm.federation import ClientRuntime, ModelHost, Server, clients_per_round
from fedumm.report import save_accuracy_plot
from fedumm.errors import AdapterStateError, ConfigError
from fedumm.runlog import Checkpoint, RunFolder, clients_path, read_checkpoint
from fedumm.strategies import ClientAlgorithm, State


@dataclass
class PhaseResult:
    phase: str
    metric: str = "vqa_accuracy"  # the task's primary metric
    records: list[dict[str, Any]] = field(default_factory=list)
    final_state: State = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        return self.records[-1]["global"][self.metric]

    @property
    def initial_accuracy(self) -> float:
        return self.records[0]["global"][self.metric]


@dataclass
class RunResult:
    run_dir: str
    federated: PhaseResult | None
    centralized: PhaseResult | None
    majority_baseline: float
    summary: dict[str, Any]


def majority_baseline_accuracy(train: Sequence[dict], test: Sequence[dict], task: str = "vqa") -> tuple[str, float | None]:
    """Score of always answering the training set's most frequent answer (None for captions)."""
    answer = majority_answer(row["multiple_choice_answer"] for row in train)
    if not test or task == "caption":
        return answer, None if task == "caption" else 0.0
    if task == "classification":
        labels = [row["multiple_choice_answer"] for row in test]
        return answer, accuracy([answer] * len(labels), labels)
    return answer, sum(vqa_accuracy(answer, row["answers"]) for row in test) / len(test)


def check_local_states(checkpoint: Checkpoint, host: ModelHost) -> None:
    """A checkpoint's kept-local units must be this model's (before any run folder changes)."""
    for cid, state in checkpoint.local_states.items():
        try:
            check_state_matches(host.initial_local_state, state, f"client {cid}'s kept-local units")
        except AdapterStateError as exc:
            raise ConfigError(f"federation.resume_from: {clients_path(checkpoint.path)}: {exc}") from exc


def restore_clients(runtimes: dict[int, ClientRuntime], checkpoint: Checkpoint, host: ModelHost) -> None:
    """Per-client algorithm state and kept-local units of a resumed run (checked by
    ``Server.restore`` and ``check_local_states``)."""
    algorithm = next(iter(runtimes.values())).algorithm if runtimes else None
    stateful = host.local_units or (algorithm is not None and type(algorithm) is not ClientAlgorithm)
    if stateful and not checkpoint.clients_saved:
        warnings.warn(f"{checkpoint.path}: no client state was saved with it (e.g. an NVIDIA FLARE run, whose "
                      "sites keep theirs): clients restart their algorithm state and kept-local units", stacklevel=2)
    for cid, state in checkpoint.client_states.items():
        runtimes[cid].client_state = dict(state)
    for cid, state in checkpoint.local_states.items():
        runtimes[cid].local_state = dict(state)


def run_rounds(
    config: RunConfig,
    host: ModelHost,
    clients: Sequence[ClientData],
    global_test: Sequence[dict],
    run: RunFolder,
    phase: str,
    server: Server | None = None,
    prior_records: Sequence[dict[str, Any]] = (),
) -> PhaseResult:
    """Round 0 evaluates the untrained adapter; rounds 1..R sample, fit, aggregate, evaluate.

    A resumed ``server`` (``Server.from_config`` with federation.resume_from) continues at its
    start_round + 1; ``prior_records`` are the earlier rounds' records, already in the run folder."""
    progress = config.output.progress
    test = list(global_test)[: config.eval.max_samples] if config.eval.max_samples else list(global_test)
    server = server or Server.from_config(config, host.initial_state, len(clients))
    strategy = server.strategy
    runtimes = {c.client_id: ClientRuntime(c, host, config, strategy.client_algorithm()) for c in clients}
    if server.resumed is not None:
        restore_clients(runtimes, server.resumed, host)
    full_bytes = full_model_nbytes(host.model)
    metric = PRIMARY_METRIC[config.eval.task]
    result = PhaseResult(phase, metric, records=list(prior_records))

    host.set_state(server.global_state)
    host.reset_local()
    if not result.records or result.records[-1]["round"] != server.start_round:
        # Round 0, or a resumed checkpoint without the record of its round: evaluate it here.
        record = {"phase": phase, "round": server.start_round, "global": host.evaluate(test, config.eval.batch_size)}
        run.append_metrics(record)
        result.records.append(record)

    # Bars only on a terminal (disable=None); the one-line round summaries always show.
    rounds = tqdm(range(server.start_round + 1, config.federation.rounds + 1), desc=f"{phase} rounds",
                  unit="round", disable=None if progress else True)
    for round_num in rounds:
        start = time.perf_counter()
        selected = server.sample_clients(round_num, sorted(runtimes))
        download = server.broadcast(round_num)
        replies = [runtimes[cid].fit(download, round_num, progress) for cid in selected]
        server.aggregate(replies, round_num)
        fit_seconds = time.perf_counter() - start

        host.set_state(server.global_state)
        host.reset_local()  # the global model has no personalised units
        eval_start = time.perf_counter()
        global_metrics = host.evaluate(test, config.eval.batch_size)
        upload = {str(r.client_id): len(r.payload) for r in replies}
        record = {
            "phase": phase,
            "round": round_num,
            "clients": selected,
            "global": global_metrics,
            "client_metrics": {str(r.client_id): {"num_samples": r.num_samples, **r.metrics} for r in replies},
            "bytes": {
                "upload": upload,
                "download": {str(cid): len(download) for cid in selected},
                "total": sum(upload.values()) + len(download) * len(selected),
                "full_finetune_per_message": full_bytes,
                "reduction_pct": 100.0 * (1 - len(download) / full_bytes),
            },
            "seconds": {"fit": fit_seconds, "eval": time.perf_counter() - eval_start,
                        "round": time.perf_counter() - start},
        }
        run.append_metrics(record)
        run.save_checkpoint(
            round_num, server.global_state, strategy.state_dict(),
            client_states={cid: r.client_state for cid, r in runtimes.items() if r.client_state},
            local_states={cid: r.local_state for cid, r in runtimes.items() if r.local_state},
            strategy=strategy.name, num_clients=len(clients), phase=phase,
        )
        result.records.append(record)
        if progress:
            tqdm.write(
                f"[{phase}] round {round_num}/{config.federation.rounds}: "
                f"global {metric} {global_metrics[metric]:.3f} | clients {len(selected)} | "
                f"upload {len(replies[0].payload) / 1024:.1f} KiB/client | {record['seconds']['round']:.1f}s"
            )
    result.final_state = server.global_state
    return result


def centralized_config(config: RunConfig, num_fed_clients_per_round: int) -> RunConfig:
    """Same trainer and budget on pooled data: one client, every round, one pass per epoch."""
    central = config.model_copy(deep=True)
    central.federation.num_clients = 1
    central.federation.fraction_fit = 1.0
    central.federation.min_fit_clients = 1
    central.federation.strategy = StrategyConfig()  # plain local training: FedAvg of one client
    central.federation.resume_from = None  # the baseline always trains from the initial adapter
    if central.train.local_steps is not None:
        # Federated rounds take local_steps on each sampled client; match the total.
        central.train.local_steps = config.train.local_steps * num_fed_clients_per_round
    return central


def simulate(
    config: RunConfig,
    *,
    federated: bool = True,
    centralized: bool | None = None,
    host: ModelHost | None = None,
    data: FederatedData | None = None,
) -> RunResult:
    """Run a job end to end and write its run folder. Returns the metrics for callers/tests."""
    resume = read_checkpoint(config.federation.resume_from) if federated and config.federation.resume_from else None
    if resume is not None:
        resume.check_config(config, config.federation.num_clients)  # before any model loads
    # Resuming the run folder the output names continues it in place (fedumm run --resume).
    in_place = (resume is not None and resume.run_dir is not None
                and resume.run_dir.resolve() == RunFolder.path_for(config).resolve())
    if not in_place:
        RunFolder.check_available(config)
    # Data and model load next: a bad path or column fails before the run folder exists.
    data = data or build_federated_data(config.data, config.federation.num_clients, config.seed,
                                         task=config.eval.task)
    host = host or ModelHost(config)
    server, prior = None, []
    if federated:  # a resumed checkpoint is checked against the model before the folder changes
        server = Server.from_config(config, host.initial_state, len(data.clients), checkpoint=resume)
        if resume is not None:
            check_local_states(resume, host)
    if in_place:
        run = RunFolder.reopen(config, resume.round)
        prior = run.records_through(resume.round)
    else:
        run = RunFolder.create(config)
        if resume is not None and resume.run_dir is not None:
            prior = RunFolder(resume.run_dir).records_through(resume.round)
            for record in prior:
                run.append_metrics(record)
    run.write_json("partition.json", data.partition.to_dict())
    save_partition_heatmap(data.partition, run.path / "partition.png")
    majority, baseline = majority_baseline_accuracy(data.pooled_train, data.global_test, config.eval.task)
    trainable, total = host.count_parameters()
    if config.output.progress:
        tqdm.write(
            f"{len(data.pooled_train)} training rows over {len(data.clients)} clients "
            f"(sizes {data.partition.sizes}, label skew {data.partition.skew():.2f}), "
            f"{len(data.global_test)} global test rows; {config.model.backend} "
            f"{host.backend.name_or_path}: {trainable:,} trainable of {total:,} parameters"
        )

    fed_result = cen_result = None
    if federated:
        fed_result = run_rounds(config, host, data.clients, data.global_test, run, "federated", server, prior)
        host.set_state(fed_result.final_state)
        host.reset_local()
        run.save_adapter(host)
    if centralized if centralized is not None else config.eval.centralized_baseline:
        central = centralized_config(config, clients_per_round(config.federation, config.federation.num_clients))
        pooled = [ClientData(0, data.pooled_train, [])]
        host.set_state(host.initial_state)
        host.reset_local()
        cen_result = run_rounds(central, host, pooled, data.global_test, run, "centralized")
        run.save_adapter(host, "centralized_adapter" if federated else "adapter")

    summary = {
        "name": config.name,
        "run_dir": str(run.path),
        "num_clients": config.federation.num_clients,
        "rounds": config.federation.rounds,
        "strategy": config.federation.strategy.name,
        "partition_alpha": config.data.partition.alpha,
        "partition_skew": data.partition.skew(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        **({"trainable_by_stage": stages} if len(stages := host.trainable_by_stage()) > 1 else {}),
        "task": config.eval.task,
        "metric": PRIMARY_METRIC[config.eval.task],
        "majority_answer": majority,
        "majority_baseline_accuracy": baseline,
        **data.load_report(run.path),  # skipped broken rows: counts here, messages in load_problems.txt
    }
    if resume is not None:
        summary["resumed_from"] = {"checkpoint": str(resume.path), "round": resume.round}
    for result in (fed_result, cen_result):
        if result is not None:
            summary[f"{result.phase}_initial_accuracy"] = result.initial_accuracy
            summary[f"{result.phase}_final_accuracy"] = result.final_accuracy
            summary[f"{result.phase}_by_answer_type"] = {
                k: v[result.metric] for k, v in result.records[-1]["global"].get("by_answer_type", {}).items()
            }
            summary[f"{result.phase}_seconds"] = sum(r["seconds"]["round"] for r in result.records[1:])
    if fed_result is not None and len(fed_result.records) > 1:
        last = fed_result.records[-1]["bytes"]
        summary["bytes_per_round"] = last["total"]
        summary["adapter_message_bytes"] = next(iter(last["download"].values()))
        summary["full_finetune_message_bytes"] = last["full_finetune_per_message"]
        summary["communication_reduction_pct"] = last["reduction_pct"]
    run.write_json("summary.json", summary)
    save_accuracy_plot(run.read_metrics(), run.path / "accuracy.png", PRIMARY_METRIC[config.eval.task])
    return RunResult(str(run.path), fed_result, cen_result, baseline, summary)

