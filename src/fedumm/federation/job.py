"""THE job, written once for every engine: from a transport, a model host and a run folder
to the finished run folder. It writes the partition summary, computes the majority-answer
baseline from the clients' answer counts, runs the federated phase (``run_rounds``) and,
where the pooled data is at hand, the centralized baseline with the same trainer and budget,
then the adapter, summary.json, summary.txt and the accuracy plot.

The engine builds the pieces: the in-process engine loads the data itself and hands a
``LocalTransport``; the FLARE controller hands its FLARE transport and the server's test
split; both then call ``run_job``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedumm.config import PrivacyConfig, RunConfig, StrategyConfig
from fedumm.data.federated import ClientData
from fedumm.data.geneval import load_geneval_prompts, write_geneval_layout
from fedumm.data.partition import save_partition_heatmap
from fedumm.errors import AdapterStateError, ConfigError, DataError
from fedumm.federation.host import ModelHost
from fedumm.federation.loop import GENEVAL_FOLDER, TIME_PARTS, Log, PhaseResult, run_rounds
from fedumm.federation.server import Server
from fedumm.federation.transport import LocalTransport, SetupInfo, Transport
from fedumm.metrics import Evaluation
from fedumm.metrics.geneval import t2i_metric_problem
from fedumm.models.generation import T2I
from fedumm.report import format_summary, save_accuracy_plot
from fedumm.report_html import write_report
from fedumm.runlog import Checkpoint, RunFolder, atomic_write_bytes, read_checkpoint
from fedumm.tracking import Trackers
from fedumm.types import check_state_matches


@dataclass
class RunResult:
    run_dir: str
    federated: PhaseResult | None
    centralized: PhaseResult | None
    majority_baseline: float | None
    summary: dict[str, Any]


# ---------------------------------------------------------------------------- resume


def read_resume(config: RunConfig) -> tuple[Checkpoint | None, bool]:
    """The checkpoint federation.resume_from names (checked against the config, before any model
    loads) and whether it continues the run folder the output names in place (``fedumm run
    --resume``). In place, a run whose rounds are all done is finished (adapter, summary) rather
    than refused; from a new folder it has nothing left to run. Fails early when the run would
    replace an earlier folder by accident."""
    resume = read_checkpoint(config.federation.resume_from) if config.federation.resume_from else None
    in_place = (
        resume is not None
        and resume.run_dir is not None
        and resume.run_dir.resolve() == RunFolder.path_for(config).resolve()
    )
    if resume is not None:
        resume.finish_allowed = in_place
        resume.check_config(config, config.federation.num_clients)
    if not in_place:
        RunFolder.check_available(config)
    return resume, in_place


def check_local_states(checkpoint: Checkpoint, host: ModelHost) -> None:
    """A checkpoint's kept-local units must be this model's (before any run folder changes)."""
    for cid, state in checkpoint.local_states.items():
        try:
            check_state_matches(host.initial_local_state, state, f"client {cid}'s kept-local units")
        except AdapterStateError as exc:
            raise ConfigError(f"federation.resume_from: {checkpoint.clients_file or checkpoint.path}: {exc}") from exc


def open_run(config: RunConfig, resume: Checkpoint | None, in_place: bool) -> tuple[RunFolder, list[dict]]:
    """The run folder and the records of the rounds already done (a resumed run's). In place,
    what a killed run left half-written is removed first."""
    if in_place:
        run = RunFolder.reopen(config, resume.round)
        return run, run.records_through(resume.round)
    run = RunFolder.create(config)
    prior: list[dict] = []
    if resume is not None and resume.run_dir is not None:
        prior = RunFolder(resume.run_dir).records_through(resume.round)
        run.rewrite_metrics(prior)
    return run, prior


# ---------------------------------------------------------------------------- phases


def centralized_config(config: RunConfig) -> RunConfig:
    """Same trainer and budget on pooled data: one client, every round, one pass per epoch."""
    central = config.model_copy(deep=True)
    central.federation.num_clients = 1
    central.federation.fraction_fit = 1.0
    central.federation.min_fit_clients = 1
    central.federation.strategy = StrategyConfig()  # plain local training: FedAvg of one client
    central.federation.resume_from = None  # the baseline always trains from the initial adapter
    central.adapter.client_ranks = None  # one client, at the host's rank
    central.data.tasks = None  # one pooled client holds every task (data.tasks leaves no row unheld)
    central.privacy = PrivacyConfig()  # the pooled baseline is the non-private reference
    central.federation.mode = "rounds"  # one pooled client: its one_shot round would have no ensemble to score
    if central.train.local_steps is not None:
        # Federated rounds take local_steps on each sampled client; match the total.
        central.train.local_steps = config.train.local_steps * config.federation.clients_per_round()
    return central


def eval_rows(config: RunConfig, global_test: Sequence[dict]) -> list[dict]:
    """The global test rows the server evaluates on (eval.max_samples)."""
    return list(global_test)[: config.eval.max_samples] if config.eval.max_samples else list(global_test)


def run_centralized(
    config: RunConfig,
    host: ModelHost,
    pooled_train: list[dict],
    global_test: Sequence[dict],
    run: RunFolder,
    adapter_name: str,
    log: Log | None = None,
    trackers: Trackers | None = None,
) -> PhaseResult:
    """The centralized baseline: the same round loop over one client holding the pooled data."""
    central = centralized_config(config)
    host.set_state(host.initial_state)
    host.set_frozen_delta({})
    host.reset_local()
    server = Server.from_config(central, host.initial_state, 1)
    transport = LocalTransport(
        [ClientData(0, pooled_train, [])],
        host,
        central,
        server.strategy.client_algorithm(),
        progress=config.output.progress,
    )
    test = eval_rows(config, global_test)
    caps = {0: len(pooled_train)}
    result = run_rounds(
        central, host, server, transport, test, run, "centralized", log=log, sample_caps=caps, trackers=trackers
    )
    run.save_adapter(host, adapter_name)
    return result


# ---------------------------------------------------------------------------- summary

# geneval_* keys of a t2i evaluation that are not a category's score.
_GENEVAL_TOTALS = ("geneval_overall", "geneval_images", "geneval_checked")
#: The folder under <run>/geneval where the images for GenEval's own evaluator go (eval.geneval_prompts).
OFFICIAL_FOLDER = "official"


def check_t2i_rows(config: RunConfig, host: ModelHost, test: Sequence[dict]) -> None:
    """Before any round: the global test rows can produce the text-to-image primary metric
    (``eval.t2i_metric``; ``metrics.geneval.t2i_metric_problem``).

    Raises:
        DataError: in one line naming eval.t2i_metric.
    """
    evaluation = host.evaluation
    if T2I not in evaluation.tasks or not test:
        return
    rows = evaluation.split(list(test)).get(T2I, [])
    problem = t2i_metric_problem(
        evaluation.tasks[T2I].primary_metric,
        rows,
        list(host.palette),
        config.eval.clip_model is not None,
        "global test rows",
    )
    if problem:
        raise DataError(problem)


def official_prompts(config: RunConfig) -> list[dict]:
    """The rows of eval.geneval_prompts (GenEval's evaluation_metadata.jsonl), read before any
    round so a bad file fails first; none when unset.

    Raises:
        DataError: naming eval.geneval_prompts and what is wrong with the file.
    """
    if config.eval.geneval_prompts is None:
        return []
    try:
        rows = load_geneval_prompts(config.eval.geneval_prompts).rows
    except DataError as exc:
        raise DataError(f"eval.geneval_prompts: {exc}") from None
    if not rows:
        raise DataError(f"eval.geneval_prompts: {config.eval.geneval_prompts} holds no prompt")
    return rows


def draw_official(config: RunConfig, host: ModelHost, run: RunFolder, prompts: Sequence[dict]) -> dict[str, Any]:
    """The host's model draws eval.geneval_samples images per prompt into
    ``<run>/geneval/official`` in GenEval's layout; returns ``summary.json["geneval_official"]``:
    the folder, the counts and the commands of GenEval's evaluator (run in a GenEval checkout,
    with its object detector downloaded by its ``evaluation/download_models.sh``)."""
    folder = Path(run.path) / GENEVAL_FOLDER / OFFICIAL_FOLDER
    samples = config.eval.geneval_samples
    write_geneval_layout(folder, prompts, host.draw_samples(prompts, samples, config.eval.batch_size))
    results = folder.parent / "official_results.jsonl"
    return {
        "folder": str(folder),
        "prompts": len(prompts),
        "samples": samples,
        "command": (
            f"python evaluation/evaluate_images.py {folder} --outfile {results} --model-path <OBJECT_DETECTOR_FOLDER>"
            f" && python evaluation/summary_scores.py {results}"
        ),
    }


def _t2i_part(metrics: dict[str, Any]) -> dict[str, Any]:
    """The text-to-image metrics of a global evaluation (single task or one task of a multitask run)."""
    return metrics if metrics.get("task") == T2I else metrics.get("by_task", {}).get(T2I, {})


def t2i_summary(initial: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """A phase's text-to-image summary from its first and last global evaluations (empty when
    they score no text-to-image rows): the GenEval score and each category's, untrained
    (``initial``) and final; the VQ-reconstruction ceiling overall and per category; the
    teacher-forced image-token accuracy and NLL and CLIPScore, initial and final, where measured."""
    first, last = _t2i_part(initial), _t2i_part(final)
    if not last:
        return {}

    def pair(key: str) -> dict[str, float | None]:
        return {"initial": first.get(key), "final": last[key]}

    tags = [k.removeprefix("geneval_") for k in last if k.startswith("geneval_") and k not in _GENEVAL_TOTALS]
    out: dict[str, Any] = {}
    if "geneval_checked" in last:
        # geneval_checked of n images: the checker scores only rows of its shapes and palette.
        out.update(images=last["n"], geneval_checked=last["geneval_checked"])
    if "geneval_overall" in last:
        out["geneval_overall"] = pair("geneval_overall")
        out["by_category"] = {tag: pair(f"geneval_{tag}") for tag in tags}
    if "vq_ceiling" in last:
        out["vq_ceiling"] = last["vq_ceiling"]
        out["vq_ceiling_by_category"] = {tag: last[f"vq_ceiling_{tag}"] for tag in tags if f"vq_ceiling_{tag}" in last}
    for key in ("image_token_accuracy", "image_token_nll", "clip_score"):
        if key in last:
            out[key] = pair(key)
    return out


def time_split(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """A phase's seconds by part of the round (``loop.TIME_PARTS``, then ``other`` and ``round``),
    summed over its rounds."""
    parts = (*TIME_PARTS, "other", "round")
    return {part: sum(r.get("seconds", {}).get(part, 0.0) for r in records) for part in parts}


def phase_summary(result: PhaseResult, evaluation: Evaluation) -> dict[str, Any]:
    """A phase's summary keys; a multitask run adds ``<phase>_by_task``: each task's final metrics."""
    final = result.final_record["global"]
    out = {
        f"{result.phase}_initial_accuracy": result.initial_accuracy,
        f"{result.phase}_final_accuracy": result.final_accuracy,
        f"{result.phase}_by_answer_type": {k: v[result.metric] for k, v in final.get("by_answer_type", {}).items()},
        f"{result.phase}_seconds": sum(r["seconds"]["round"] for r in result.records[1:]),
        f"{result.phase}_time_split": time_split(result.records[1:]),
    }
    t2i = t2i_summary(result.records[0]["global"], final)
    if t2i:
        out[f"{result.phase}_t2i"] = t2i
    if evaluation.multitask:
        initial = result.records[0]["global"].get("by_task", {})
        by_task = out[f"{result.phase}_by_task"] = {}
        for name, part in final.get("by_task", {}).items():
            metric = evaluation.tasks[name].primary_metric
            by_task[name] = {
                "n": part["n"],
                "metric": metric,
                "initial": initial.get(name, {}).get(metric),
                "final": part[metric],
            }
    return out


def job_summary(
    config: RunConfig,
    run: RunFolder,
    host: ModelHost,
    setup: SetupInfo,
    baseline: tuple[str, float | None],
    phases: Sequence[PhaseResult],
    global_test: Sequence[dict] = (),
) -> dict[str, Any]:
    trainable, total = host.count_parameters()
    stages = host.trainable_by_stage()
    summary: dict[str, Any] = {
        "name": config.name,
        "run_dir": str(run.path),
        "num_clients": config.federation.num_clients,
        "rounds": config.federation.rounds,
        "strategy": config.federation.strategy.name,
        "mode": config.federation.mode,
        "partition_alpha": config.data.partition.alpha,
        "partition_skew": setup.partition.skew(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        **({"trainable_by_stage": stages} if len(stages) > 1 else {}),
        "task": config.eval.task,
        "metric": host.evaluation.primary_metric,
        "metric_bounded": host.evaluation.bounded,
        **({"task_weights": dict(host.evaluation.weights)} if host.evaluation.multitask else {}),
        "majority_answer": baseline[0],
        "majority_baseline_accuracy": baseline[1],
        **(
            {"majority_baseline_by_task": host.evaluation.task_baselines(setup.task_answer_counts, list(global_test))}
            if host.evaluation.multitask
            else {}
        ),
        **setup.partition.skipped_summary(),  # counts only; the messages are in load_problems.txt
    }
    for result in phases:
        summary.update(phase_summary(result, host.evaluation))
    federated = next((r for r in phases if r.phase == "federated"), None)
    if federated is not None and len(federated.records) > 1:
        last = federated.records[-1]["bytes"]
        summary["bytes_per_round"] = last["total"]
        summary["adapter_message_bytes"] = max(last["download"].values())  # client_ranks: the largest
        summary["full_finetune_message_bytes"] = last["full_finetune_per_message"]
        summary["communication_reduction_pct"] = last["reduction_pct"]
    if federated is not None and "one_shot" in federated.records[-1]:
        references = federated.records[-1]["one_shot"]
        floor = references["local_floor"]
        summary["one_shot"] = {
            "ensemble": references["ensemble"][references["metric"]],
            "local_floor": {k: floor[k] for k in ("mean", "min", "max")},
        }
    return summary


def privacy_summary(config: RunConfig, server: Server, result: PhaseResult) -> dict[str, Any]:
    """``summary.json["privacy"]``: the run's guarantee (client level: the server's accountant;
    sample level: the largest epsilon a client reported)."""
    if server.privacy is not None:
        return {"privacy": server.privacy.summary(result.stopped)}
    privacy = config.privacy
    if privacy.level != "sample":
        return {"secure_aggregation": True} if privacy.secure_aggregation else {}
    reported = [m for r in result.records for m in r.get("client_metrics", {}).values() if "dp_epsilon" in m]
    worst = max(reported, key=lambda m: m["dp_epsilon"], default={})
    return {
        "privacy": {
            "epsilon": worst.get("dp_epsilon"),
            "delta": privacy.delta,
            "noise_multiplier": worst.get("dp_noise_multiplier", privacy.noise_multiplier),
            "sample_rate": worst.get("dp_sample_rate"),
            "rounds": len(result.records) - 1,
            "accountant": "opacus-rdp",
            "mechanism": "dp-sgd" + ("+secure_aggregation" if privacy.secure_aggregation else ""),
            "level": "sample",
        }
    }


def rank_summary(server: Server, run: RunFolder) -> dict[str, Any]:
    """``adapter_rank``: the LoRA rank of the saved global adapter (adapter.r; FLoRA: its merged
    ΔW's); ``client_ranks``: each client's rank at the end under adapter.client_ranks (HetLoRA:
    after self-pruning)."""
    out: dict[str, Any] = {}
    adapter_config = Path(run.path) / "adapter" / "adapter_config.json"
    if adapter_config.is_file():
        out["adapter_rank"] = json.loads(adapter_config.read_text()).get("r")
    if server.strategy.ranks:
        out["client_ranks"] = {str(cid): rank for cid, rank in sorted(server.strategy.ranks.items())}
    return out


def write_summary(run: RunFolder, summary: dict[str, Any]) -> None:
    """summary.json, summary.txt, accuracy.png and report.html from the summary and the run's records."""
    run.write_json("summary.json", summary)
    records = run.read_metrics()
    atomic_write_bytes(run.path / "summary.txt", (format_summary(summary, records) + "\n").encode())
    save_accuracy_plot(records, run.path / "accuracy.png", summary["metric"], bounded=summary["metric_bounded"])
    write_report(run.path)


# ---------------------------------------------------------------------------- the job


def run_job(
    config: RunConfig,
    transport: Transport,
    host: ModelHost,
    run: RunFolder,
    global_test: Sequence[dict],
    server: Server,
    *,
    prior_records: Sequence[dict[str, Any]] = (),
    pooled_train: list[dict] | None = None,
    federated: bool = True,
    log: Log | None = None,
    label: str | None = None,
) -> RunResult:
    """Run a job into ``run``: partition summary and baseline from ``transport.setup()``, the
    federated rounds (``federated``), the centralized baseline where ``pooled_train`` is given,
    the adapter(s) and the summary. ``server`` may be resumed (``Server.from_config``); one resumed
    after its last round (``fedumm run --resume`` of a finished run, or of one killed before its
    adapter was written) trains nothing and writes the adapter from its checkpoint's global state."""
    # Fail before any round: a primary metric the test rows cannot give, a bad GenEval prompt file.
    check_t2i_rows(config, host, eval_rows(config, global_test))
    prompts = official_prompts(config)
    setup = transport.setup()
    run.write_json("partition.json", setup.partition.to_dict())
    save_partition_heatmap(setup.partition, run.path / "partition.png")
    baseline = host.evaluation.baseline(setup.answer_counts, global_test)
    if log is not None:
        trainable, total = host.count_parameters()
        log(
            f"{setup.train_rows} training rows over {len(transport.client_ids)} clients "
            f"(sizes {setup.partition.sizes}, label skew {setup.partition.skew():.2f}), "
            f"{len(global_test)} global test rows; {config.model.backend} "
            f"{host.backend.name_or_path}: {trainable:,} trainable of {total:,} parameters"
        )
    phases: list[PhaseResult] = []
    official: dict[str, Any] | None = None
    if federated and log is not None and server.start_round >= config.federation.rounds:
        log(f"all {config.federation.rounds} rounds are done: finishing the run (adapter, summary) without training")
    trackers = Trackers.open(config, run.path)
    try:
        if federated:
            phases.append(
                run_rounds(
                    config,
                    host,
                    server,
                    transport,
                    eval_rows(config, global_test),
                    run,
                    "federated",
                    prior_records=prior_records,
                    log=log,
                    label=label,
                    sample_caps=dict(enumerate(setup.partition.sizes)),
                    trackers=trackers,
                )
            )
            host.set_state(phases[-1].final_state)
            host.reset_local()
            run.save_adapter(host)
            official = draw_official(config, host, run, prompts) if prompts else None
        if pooled_train is not None:
            adapter_name = "centralized_adapter" if federated else "adapter"
            phases.append(run_centralized(config, host, pooled_train, global_test, run, adapter_name, log, trackers))
        summary = job_summary(config, run, host, setup, baseline, phases, global_test)
        if official is not None:
            summary["geneval_official"] = official
        summary.update(transport.summary_extras(phases[0].records if federated else []))
        if federated:
            summary.update(privacy_summary(config, server, phases[0]))
            summary.update(rank_summary(server, run))
        if server.resumed is not None:
            summary["resumed_from"] = {"checkpoint": str(server.resumed.path), "round": server.resumed.round}
        write_summary(run, summary)
        trackers.finish([run.path / name for name in ("summary.json", "report.html", "adapter", "centralized_adapter")])
    finally:
        trackers.close()
    by_phase = {p.phase: p for p in phases}
    return RunResult(str(Path(run.path)), by_phase.get("federated"), by_phase.get("centralized"), baseline[1], summary)
