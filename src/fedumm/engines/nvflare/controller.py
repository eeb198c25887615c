"""The server side inside NVIDIA FLARE: fedumm's ``Server`` and strategy in a ModelController.

Not FLARE's FedAvg: every round goes through ``federation.Server`` (sampling, broadcast with
the strategy's extras, aggregation with its server state), exactly as the in-process engine
drives it; FLARE only carries the messages. The initial global adapter comes from a
``ModelHost`` built once here from the run config (the seeded LoRA initialisation every
engine uses), never from a persistor, so only adapter tensors ever travel.

The controller writes fedumm's run folder (config.yaml, metrics.jsonl with the in-process
record schema, partition.json, checkpoints, the PEFT adapter, summary.json/.txt) into its
job workspace (``<server run dir>/fedumm_run``), which ``fedumm run`` copies out of the
simulator workspace and ``nvflare job download`` brings back from a deployment.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedumm.engines.nvflare import protocol as P

ERROR_FILE = "fedumm_error.txt"
# Seconds a round (and the setup task) waits for its clients before the job fails naming the
# missing ones: generous for real models; engine.task_timeout sets it per job, 0 = no limit.
DEFAULT_TASK_TIMEOUT = 14_400


class FedummController(ModelController):
    def __init__(
        self,
        config_file: str = P.CONFIG_FILE,
        data_placement: str = "partition",
        task_timeout: int = DEFAULT_TASK_TIMEOUT,
        task_check_period: float = 0.5,
    ):
        """Args (all land in the exported job's config_fed_server.json):
            config_file: the run config, in the app's config folder.
            data_placement: "partition" (clients split data.* with the run seed) or "site".
            task_timeout: seconds a round (and the setup task) waits for its clients; 0 = no limit.
            task_check_period: seconds between checks for finished tasks.
        """
        super().__init__(persistor_id="", ignore_result_error=False, task_check_period=task_check_period)
        if data_placement not in ("partition", "site"):
            raise ValueError(f"data_placement must be 'partition' or 'site', got {data_placement!r}")
        self.config_file = config_file
        self.data_placement = data_placement
        self.task_timeout = task_timeout
        self.task_check_period = task_check_period
        # This round's whole FLARE messages (serialized task data / results as FLARE's server
        # hands them over), client name -> bytes; the task data every client of a round shares
        # is serialized once.
        self._wire: dict[str, dict[str, int]] = {"download": {}, "upload": {}}
        self._wire_lock = threading.Lock()
        self._download_seen: tuple[Any, int] | None = None  # (the round's shared task content, its size)
        self._rounds: int | None = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        super().start_controller(fl_ctx)
        # FLARE 2.9 hands task_check_period to its server communicator as a public attribute
        # that the communicator never reads (it polls with its own _task_check_period, 0.2 s):
        # set the one it uses, so results are picked up within task_check_period.
        communicator = getattr(self, "communicator", None)
        if communicator is not None and hasattr(communicator, "_task_check_period"):
            communicator._task_check_period = self.task_check_period

    # ------------------------------------------------------------------ FLARE events

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.AFTER_TASK_DATA_FILTER:
            self._measure("download", fl_ctx, fl_ctx.get_prop(FLContextKey.TASK_DATA))
        elif event_type == EventType.BEFORE_TASK_RESULT_FILTER:
            self._measure("upload", fl_ctx, fl_ctx.get_prop(FLContextKey.TASK_RESULT))

    def _measure(self, direction: str, fl_ctx: FLContext, shareable: Any) -> None:
        if shareable is None or fl_ctx.get_prop(FLContextKey.TASK_NAME) != P.TRAIN_TASK:
            return
        peer = fl_ctx.get_peer_context()
        client = peer.get_identity_name() if peer is not None else ""
        try:
            from nvflare.fuel.utils import fobs

            with self._wire_lock:
                # FLARE gives each client a shallow copy of the task: the same content (the DXO
                # with the payload), its own few headers. Serialize that content once per round.
                content = shareable.get("DXO") if direction == "download" else None
                if content is not None and self._download_seen is not None and self._download_seen[0] is content:
                    size = self._download_seen[1]
                else:
                    size = len(fobs.dumps(shareable))
                    if content is not None:
                        self._download_seen = (content, size)
                self._wire[direction][client] = size
        except Exception as exc:  # measuring must never break a round; the record then lacks this client
            self.warning(f"could not measure the {direction} message of {client or '?'}: {exc}")

    def _take_wire(self, ids: dict[str, int]) -> dict[str, Any]:
        """The round's FLARE message sizes by client id (and the total), for the record."""
        with self._wire_lock:
            wire, self._wire = self._wire, {"download": {}, "upload": {}}
            self._download_seen = None
        out: dict[str, Any] = {d: {str(ids[name]): n for name, n in sorted(wire[d].items(), key=lambda kv: ids.get(kv[0], -1))
                                   if name in ids} for d in ("download", "upload")}
        out["total"] = sum(out["download"].values()) + sum(out["upload"].values())
        return out

    # ------------------------------------------------------------------ workflow

    def run(self) -> None:
        workspace = self.engine.get_workspace()
        job_id = self.fl_ctx.get_job_id()
        out = Path(workspace.get_run_dir(job_id)) / P.RUN_FOLDER
        try:
            self._run(Path(workspace.get_app_config_dir(job_id)) / self.config_file, out)
        except Exception as exc:
            out.mkdir(parents=True, exist_ok=True)
            (out / ERROR_FILE).write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
            raise

    def _task_data(self, meta: dict[str, Any], payload: bytes | None = None, round_num: int = 0) -> FLModel:
        if payload is None:
            return FLModel(params_type=ParamsType.FULL, params={}, meta=meta)
        return FLModel(params_type=ParamsType.FULL, params={P.PAYLOAD_KEY: P.pack(payload)},
                       current_round=round_num, total_rounds=self._rounds, meta=meta)

    def _check(self, task: str, results: list[FLModel], targets: list[str]) -> list[FLModel]:
        if self.abort_signal is not None and self.abort_signal.triggered:
            raise RuntimeError(f"{task}: the job was aborted")
        if len(results) != len(targets):
            got = {r.meta.get("client_name", "?") for r in results}
            missing = sorted(set(targets) - got)
            limit = f"engine.task_timeout={self.task_timeout}s" if self.task_timeout else "no engine.task_timeout"
            raise RuntimeError(f"{task}: {len(results)} of {len(targets)} clients answered; no answer from "
                               f"{missing} ({limit})")
        return results

    def _send(self, task: str, targets: list[str], data: FLModel) -> list[FLModel]:
        results = self.send_model_and_wait(task_name=task, data=data, targets=targets, timeout=self.task_timeout)
        return self._check(task, results, targets)

    def _send_async(self, task: str, targets: list[str], data: FLModel):
        """Send without blocking; returns a function that waits for every answer."""
        results: list[FLModel] = []
        done = threading.Event()

        def collect(model: FLModel) -> None:
            results.append(model)
            if len(results) == len(targets):
                done.set()

        self.send_model(task_name=task, data=data, targets=targets, timeout=self.task_timeout, callback=collect)

        def wait() -> list[FLModel]:
            while not done.wait(0.05):
                if self.abort_signal is not None and self.abort_signal.triggered:
                    break
                if self.get_num_standing_tasks() == 0 and not done.is_set():
                    time.sleep(0.2)  # the last callback may still be running
                    break
            return self._check(task, results, targets)

        return wait

    def _run(self, config_path: Path, out: Path) -> None:
        from fedumm.config import load_config, save_config

        config = load_config(config_path)
        num_clients = config.federation.num_clients
        self._rounds = config.federation.rounds

        names = [c.name for c in self.engine.get_clients()]
        if len(names) != num_clients:
            raise RuntimeError(
                f"federation.num_clients is {num_clients} but {len(names)} FLARE clients joined: {sorted(names)}"
            )
        ids = P.client_ids(names)
        name_of = {cid: name for name, cid in ids.items()}

        base_meta = {P.META_CLIENT_IDS: ids, P.META_NUM_CLIENTS: num_clients, P.META_PLACEMENT: self.data_placement}
        # Setup first, without waiting: the clients load their data and model while the server
        # builds its own; each answers with its data statistics (counts, never rows).
        self.info(f"fedumm: setting up {num_clients} clients {sorted(names)}")
        wait_setup = self._send_async(P.SETUP_TASK, sorted(names), self._task_data(dict(base_meta)))

        import torch
        from transformers.utils import logging as hf_logging

        from fedumm.adapters import full_model_nbytes
        from fedumm.data.federated import load_source
        from fedumm.data.partition import save_partition_heatmap
        from fedumm.engines.simulation import PhaseResult
        from fedumm.federation import FitReply, ModelHost, Server
        from fedumm.report import format_summary
        from fedumm.runlog import RunFolder
        from fedumm.strategies import build_strategy
        from fedumm.task_metrics import PRIMARY_METRIC

        hf_logging.disable_progress_bar()
        if config.engine.torch_threads:
            torch.set_num_threads(config.engine.torch_threads)

        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        run = RunFolder(out)
        host = ModelHost(config)  # the seeded initial adapter: what every engine starts from
        test: list[dict] = []
        if config.engine.server_eval:
            test = list(load_source(config.data, config.seed).test)
            if config.eval.max_samples:
                test = test[: config.eval.max_samples]
        # Built as the in-process engine builds it (strategy for this run, federation.resume_from restore).
        server = Server.from_config(config, host.initial_state, num_clients)
        full_bytes = full_model_nbytes(host.model)

        setup = wait_setup()
        stats_by_id = {ids[r.meta["client_name"]]: r.meta[P.META_STATS] for r in setup}
        stats = [stats_by_id[cid] for cid in range(num_clients)]
        sites = [name_of[cid] for cid in range(num_clients)] if self.data_placement == "site" else None
        partition = P.partition_from_stats(stats, sites)
        run.write_json("partition.json", partition.to_dict())
        save_partition_heatmap(partition, out / "partition.png")
        majority, baseline = P.majority_from_stats(stats, test, config.eval.task)

        host.set_state(server.global_state)
        host.reset_local()
        metric = PRIMARY_METRIC[config.eval.task]
        record: dict[str, Any] = {"phase": "federated", "round": 0,
                                  "global": host.evaluate(test, config.eval.batch_size)}
        run.append_metrics(record)
        result = PhaseResult("federated", metric=metric, records=[record])

        for round_num in range(1, config.federation.rounds + 1):
            start = time.perf_counter()
            selected = server.sample_clients(round_num, sorted(ids.values()))
            download = server.broadcast(round_num)
            meta = {**base_meta, P.META_ROUND: round_num}
            self._take_wire(ids)  # start the round's count afresh
            results = self._send(P.TRAIN_TASK, [name_of[c] for c in selected],
                                 self._task_data(meta, download, round_num))
            wire = self._take_wire(ids)
            by_id = {ids[r.meta["client_name"]]: r for r in results}
            # In the sampled order, as the in-process engine aggregates them.
            replies = [FitReply(cid, P.unpack(by_id[cid].params), int(by_id[cid].meta[P.META_NUM_SAMPLES]),
                                dict(by_id[cid].meta.get(P.META_METRICS, {}))) for cid in selected]
            server.aggregate(replies, round_num)
            fit_seconds = time.perf_counter() - start

            host.set_state(server.global_state)
            host.reset_local()
            eval_start = time.perf_counter()
            global_metrics = host.evaluate(test, config.eval.batch_size)
            # The in-process engine's record (engines/simulation.py run_rounds), field for field.
            upload = {str(r.client_id): len(r.payload) for r in replies}
            record = {
                "phase": "federated",
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
                # Whole FLARE messages (payload + FLARE's envelope), as serialized on the server.
                "nvflare_bytes": wire,
                "seconds": {"fit": fit_seconds, "eval": time.perf_counter() - eval_start,
                            "round": time.perf_counter() - start},
            }
            run.append_metrics(record)
            run.save_checkpoint(round_num, server.global_state, server.strategy.state_dict())
            result.records.append(record)
            self.info(f"fedumm round {round_num}/{config.federation.rounds}: global {metric} "
                      f"{global_metrics[metric]:.3f}, {record['seconds']['round']:.1f}s")

        result.final_state = server.global_state
        host.set_state(server.global_state)
        host.reset_local()
        run.save_adapter(host)
        trainable, total = host.count_parameters()
        # The in-process engine's summary (engines/simulation.py simulate), then FLARE's extras.
        summary = {
            "name": config.name,
            "run_dir": str(out),
            "num_clients": num_clients,
            "rounds": config.federation.rounds,
            "strategy": config.federation.strategy.name,
            "partition_alpha": config.data.partition.alpha,
            "partition_skew": partition.skew(),
            "trainable_parameters": trainable,
            "total_parameters": total,
            **({"trainable_by_stage": stages} if len(stages := host.trainable_by_stage()) > 1 else {}),
            "task": config.eval.task,
            "metric": metric,
            "majority_answer": majority,
            "majority_baseline_accuracy": baseline,
            **partition.skipped_summary(),  # as the clients reported them (counts, never rows)
            **phase_summary(result),
        }
        last = result.records[-1]["bytes"]
        summary["bytes_per_round"] = last["total"]
        summary["adapter_message_bytes"] = next(iter(last["download"].values()))
        summary["full_finetune_message_bytes"] = last["full_finetune_per_message"]
        summary["communication_reduction_pct"] = last["reduction_pct"]
        summary["engine"] = "nvflare"
        summary["nvflare_data_placement"] = self.data_placement
        summary["nvflare_clients"] = {str(cid): name for cid, name in name_of.items()}
        # The largest whole FLARE message each way (the records' nvflare_bytes).
        sizes = {d: [n for r in result.records for n in r.get("nvflare_bytes", {}).get(d, {}).values()]
                 for d in ("download", "upload")}
        if sizes["download"] and sizes["upload"]:
            summary["nvflare_message_bytes"] = {d: max(v) for d, v in sizes.items()}
        run.write_json("summary.json", summary)
        (out / "summary.txt").write_text(format_summary(summary, run.read_metrics()) + "\n")
        save_plot(run, metric)


def phase_summary(result) -> dict[str, Any]:
    """A phase's summary keys, as ``simulate`` writes them."""
    return {
        f"{result.phase}_initial_accuracy": result.initial_accuracy,
        f"{result.phase}_final_accuracy": result.final_accuracy,
        f"{result.phase}_by_answer_type": {
            k: v[result.metric] for k, v in result.records[-1]["global"].get("by_answer_type", {}).items()
        },
        f"{result.phase}_seconds": sum(r["seconds"]["round"] for r in result.records[1:]),
    }


def save_plot(run, metric: str) -> None:
    """The run folder's accuracy plot, as ``simulate`` draws it."""
    from fedumm.report import save_accuracy_plot

    save_accuracy_plot(run.read_metrics(), run.path / "accuracy.png", metric)
