"""THE round loop, written once for every engine (in the spirit of NVFlare's
``ModelController.run()`` and Flower's strategy loop): round 0 evaluates the starting
adapter; each round r = 1..R samples clients, broadcasts the global message, collects the
replies through the injected ``Transport``, aggregates, evaluates the new global adapter,
appends the round's record to metrics.jsonl, checkpoints and reports progress.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fedumm.adapters import full_model_nbytes
from fedumm.config import RunConfig
from fedumm.errors import AggregationError
from fedumm.federation.client import FitReply
from fedumm.federation.host import ModelHost
from fedumm.federation.one_shot import one_shot_references
from fedumm.federation.replies import ReplyRules
from fedumm.federation.server import Server
from fedumm.federation.transport import Message, Transport, message_for
from fedumm.finetune import plan_for_round
from fedumm.runlog import RunFolder
from fedumm.strategies import ClientUpdate
from fedumm.tracking import Trackers
from fedumm.types import State

#: Where progress lines go: ``print``-like (the in-process engine writes above the bars, the
#: FLARE controller into FLARE's log).
Log = Callable[[str], None]
#: The run folder's subfolder of generated images (text-to-image tasks).
GENEVAL_FOLDER = "geneval"


@dataclass
class PhaseResult:
    phase: str
    metric: str = "vqa_accuracy"  # the task's primary metric
    records: list[dict[str, Any]] = field(default_factory=list)
    final_state: State = field(default_factory=dict)
    stopped: str | None = None  # why the rounds ended early (privacy.max_epsilon)

    @property
    def final_accuracy(self) -> float:
        return self.records[-1]["global"][self.metric]

    @property
    def initial_accuracy(self) -> float:
        return self.records[0]["global"][self.metric]


def round_line(record: dict[str, Any], rounds: int, metric: str, label: str) -> str:
    """The one-line summary of a round's record, as every engine prints it."""
    upload = next(iter(record["bytes"]["upload"].values()), 0)
    return (
        f"[{label}] round {record['round']}/{rounds}: global {metric} {record['global'][metric]:.3f} | "
        f"clients {len(record['clients'])} | upload {upload / 1024:.1f} KiB/client | "
        f"{record['seconds']['round']:.1f}s"
    )


def round_record(
    phase: str,
    round_num: int,
    selected: Sequence[int],
    global_metrics: dict,
    replies: Sequence[FitReply],
    updates: Sequence[ClientUpdate],
    download: Message,
    full_bytes: int,
) -> dict[str, Any]:
    """A round's metrics.jsonl record (without its seconds): the accepted clients' metrics and
    the payload bytes each way per client (every reply received counts; under
    adapter.client_ranks each client's own-rank message)."""
    upload = {str(r.client_id): len(r.payload) for r in replies}
    sent = {str(cid): len(message_for(download, cid)) for cid in selected}
    largest = max(sent.values(), default=len(download) if isinstance(download, bytes) else 0)
    return {
        "phase": phase,
        "round": round_num,
        "clients": list(selected),
        "global": global_metrics,
        "client_metrics": {str(u.client_id): {"num_samples": u.num_samples, **u.metrics} for u in updates},
        "bytes": {
            "upload": upload,
            "download": sent,
            "total": sum(upload.values()) + sum(sent.values()),
            "full_finetune_per_message": full_bytes,
            "reduction_pct": 100.0 * (1 - largest / full_bytes),
        },
    }


def outcome(
    rejected: Mapping[int, str], missing: Sequence[int], aggregated: bool, unstable: str | None = None
) -> dict[str, Any]:
    """The record's keys for a round that did not go cleanly (none when every reply was used)."""
    out: dict[str, Any] = {"aggregate_error": unstable} if unstable else {}
    if rejected:
        out["rejected"] = {str(cid): reason for cid, reason in rejected.items()}
    if missing:
        out["missing"] = list(missing)
    if not aggregated:
        out["aggregated"] = False
    return out


def outcome_line(record: dict[str, Any], needed: int) -> str:
    """What went wrong in a round, in one line."""
    parts = [f"client {cid} rejected: {reason}" for cid, reason in record.get("rejected", {}).items()]
    if record.get("missing"):
        parts.append(f"no reply from clients {record['missing']}")
    if record.get("aggregate_error"):
        parts.append(f"{record['aggregate_error']}: the global model and server state stay")
    elif record.get("aggregated") is False:
        parts.append(f"fewer than {needed} valid replies: the global model and server state stay")
    return "; ".join(parts) or "every reply used"


def one_shot_line(references: dict[str, Any]) -> str:
    """The one-shot references of a record in one line."""
    metric, floor = references["metric"], references["local_floor"]
    return (
        f"one-shot references: ensemble {metric} {references['ensemble'][metric]:.3f} | local floor "
        f"mean {floor['mean']:.3f} (min {floor['min']:.3f}, max {floor['max']:.3f}) "
        f"over {len(floor['clients'])} clients"
    )


def image_folder(run: RunFolder, phase: str, round_num: int, rounds: int) -> Path | None:
    """Where the global evaluation of a round writes the images it generates for text-to-image
    rows, in GenEval's layout (``data.geneval``): ``<run>/geneval/round_000`` (the untrained
    model) and ``<run>/geneval/final`` (the last round); the centralized baseline's last round in
    ``<run>/geneval/centralized``. Other rounds: None (not written)."""
    if round_num == rounds:
        return run.path / GENEVAL_FOLDER / ("final" if phase == "federated" else phase)
    if round_num == 0 and phase == "federated":
        return run.path / GENEVAL_FOLDER / "round_000"
    return None


@dataclass
class RoundStep:
    """The aggregation step of one round."""

    updates: list[ClientUpdate]  # the accepted replies (under secure aggregation: their counts only)
    rejected: dict[int, str]
    aggregated: bool
    unstable: str | None = None  # why a step did not apply (non-finite result, a failed protocol)
    extras: dict[str, Any] = field(default_factory=dict)  # record keys of the step (secure aggregation)


def _aggregate_round(
    server: Server, transport: Transport, replies: Sequence[FitReply], rules: ReplyRules, needed: int, round_num: int
) -> RoundStep:
    """Check the replies and aggregate: the plain updates, or (``server.secure``) the secure sum of
    the updates the clients still hold."""
    if server.secure is None:
        updates, rejected = server.check(replies, rules)
        if len(updates) < needed:
            return RoundStep(updates, rejected, False)
        if server.aggregate_updates(updates, round_num):
            return RoundStep(updates, rejected, True)
        return RoundStep(updates, rejected, False, f"the {server.strategy.name} aggregate is not finite")
    # The replies carry no tensors: check their counts, then run the protocol with those clients.
    updates, rejected = server.check(replies, replace(rules, shapes={}))
    if len(updates) < max(needed, server.secure.config.threshold):
        return RoundStep(updates, rejected, False)
    trained = {k: server.global_state[k] for k in rules.shapes}
    exchange = functools.partial(transport.exchange, round_num=round_num)
    secure = server.secure.run(exchange, [u.client_id for u in updates], rules.shapes, round_num)
    extras = {"secure_aggregation": secure.record} if secure.record else {}
    if secure.mean is None:
        return RoundStep(updates, rejected, False, secure.error, extras)
    if server.apply_mean(trained, secure.mean, round_num, secure.unclipped, len(secure.survivors)):
        return RoundStep(updates, rejected, True, extras=extras)
    return RoundStep(updates, rejected, False, f"the {server.strategy.name} aggregate is not finite", extras)


def _checkpoint(run: RunFolder, server: Server, transport: Transport, round_num: int, phase: str) -> None:
    held = transport.held_client_states()
    run.save_checkpoint(
        round_num,
        server.global_state,
        server.state_dict(),
        client_states=held.client_states if held else None,
        local_states=held.local_states if held else None,
        residual_states=held.residuals if held else None,
        strategy=server.strategy.name,
        num_clients=len(transport.client_ids),
        phase=phase,
    )


def run_rounds(
    config: RunConfig,
    host: ModelHost,
    server: Server,
    transport: Transport,
    test: Sequence[dict],
    run: RunFolder,
    phase: str,
    *,
    prior_records: Sequence[dict[str, Any]] = (),
    log: Log | None = None,
    label: str | None = None,
    sample_caps: Mapping[int, int] | None = None,
    trackers: Trackers | None = None,
) -> PhaseResult:
    """Rounds ``server.start_round + 1 .. federation.rounds`` (a resumed server continues after
    its checkpoint; ``prior_records`` are the earlier rounds' records, already in the run
    folder). ``test`` is the global test set the server evaluates on; ``log`` gets one line per
    round (None: none), tagged ``label`` (default: the phase). ``sample_caps`` (client id -> its
    row count, from the setup) bound the sample count a reply may claim. ``trackers`` get every
    record (``output.trackers``).

    Replies are checked (``federation.replies``) before the strategy sees them; a round with fewer
    than ``federation.min_fit_clients`` valid replies keeps the global model and server state, and
    ``federation.max_failed_rounds`` such rounds in a row end the run with ``AggregationError``."""
    strategy = server.strategy
    full_bytes = full_model_nbytes(host.model)
    task = host.evaluation
    metric = task.primary_metric
    federation = config.federation
    caps = dict(sample_caps or {})
    failed = 0
    # Valid replies a round needs: federation.min_fit_clients, and what the strategy needs (Krum).
    needed = max(federation.min_fit_clients, strategy.min_updates())
    result = PhaseResult(phase, metric, records=list(prior_records))
    trackers = trackers or Trackers()

    host.set_state(server.global_state)
    host.set_frozen_delta(strategy.frozen_delta())
    host.reset_local()
    if not result.records or result.records[-1]["round"] != server.start_round:
        # Round 0, or a resumed checkpoint without the record of its round: evaluate it here.
        with host.saving_images(image_folder(run, phase, server.start_round, config.federation.rounds)):
            initial = host.evaluate(test, config.eval.batch_size)
        record = {"phase": phase, "round": server.start_round, "global": initial}
        run.append_metrics(record)
        trackers.log_round(record)
        result.records.append(record)

    # Bars only on a terminal (disable=None) and only where lines go to one.
    rounds = tqdm(
        range(server.start_round + 1, config.federation.rounds + 1),
        desc=f"{phase} rounds",
        unit="round",
        disable=None if config.output.progress and log is not None else True,
    )
    for round_num in rounds:
        stop = server.privacy.over_budget(round_num) if server.privacy is not None else None
        if stop is not None:
            result.stopped = stop
            if log is not None:
                log(f"[{label or phase}] stopping before round {round_num}: {stop}")
            break
        start = time.perf_counter()
        selected = server.sample_clients(round_num, transport.client_ids)
        if server.privacy is not None:
            server.privacy.spend()  # the round is charged once its clients are drawn
        download = server.broadcast(round_num, caps, selected)
        replies = transport.fit(selected, download, round_num)
        trained = list(host.parameters_of(plan_for_round(config.finetune, round_num).shared))
        step = _aggregate_round(server, transport, replies, server.rules(trained, caps, task), needed, round_num)
        updates, rejected, aggregated, unstable = step.updates, step.rejected, step.aggregated, step.unstable
        failed = 0 if aggregated else failed + 1
        fit_seconds = time.perf_counter() - start

        host.set_state(server.global_state)
        host.set_frozen_delta(strategy.frozen_delta())
        host.reset_local()  # the global model has no personalised units
        eval_start = time.perf_counter()
        with host.saving_images(image_folder(run, phase, round_num, config.federation.rounds)):
            global_metrics = host.evaluate(test, config.eval.batch_size)
        record = round_record(phase, round_num, selected, global_metrics, replies, updates, download, full_bytes)
        answered = {r.client_id for r in replies}
        missing = [cid for cid in selected if cid not in answered]
        record.update(outcome(rejected, missing, aggregated, unstable))
        record.update(step.extras)
        secure = step.extras.get("secure_aggregation")
        if secure:  # the protocol's own messages count towards the round's traffic
            record["bytes"]["total"] += sum(secure["bytes_up"].values()) + sum(secure["bytes_down"].values())
        if server.privacy is not None:
            record["privacy"] = server.privacy.record()
        record.update(transport.round_extras())
        eval_seconds = time.perf_counter() - eval_start
        references_start = time.perf_counter()
        if federation.mode == "one_shot" and aggregated and server.secure is None:
            # The server holds every upload once: score their prediction ensemble and each one alone.
            record["one_shot"] = one_shot_references(host, server.global_state, updates, test, config)
        record["seconds"] = {
            "fit": fit_seconds,
            "eval": eval_seconds,
            **({"one_shot": time.perf_counter() - references_start} if "one_shot" in record else {}),
            "round": time.perf_counter() - start,
        }
        run.append_metrics(record)
        trackers.log_round(record)
        _checkpoint(run, server, transport, round_num, phase)
        result.records.append(record)
        if log is not None:
            log(round_line(record, config.federation.rounds, metric, label or phase))
            if not aggregated or rejected or missing:
                log(f"[{label or phase}] round {round_num}: {outcome_line(record, needed)}")
            if "one_shot" in record:
                log(f"[{label or phase}] {one_shot_line(record['one_shot'])}")
        if federation.mode == "one_shot" and not aggregated:
            raise AggregationError(
                f"{phase}: the one-shot round has no aggregate (federation.mode=one_shot uploads once): "
                f"{outcome_line(record, needed)}; the round's record is in {run.path}"
            )
        if failed >= federation.max_failed_rounds:
            raise AggregationError(
                f"{phase} round {round_num}: {failed} round(s) in a row without an aggregate "
                f"({needed} valid replies (federation.min_fit_clients={federation.min_fit_clients}, {strategy.name} "
                f"{strategy.min_updates()}) and a finite result; "
                "federation.max_failed_rounds="
                f"{federation.max_failed_rounds}); this round: {outcome_line(record, needed)}; "
                f"the rounds so far are in {run.path}"
            )
    result.final_state = server.global_state
    return result
