"""The server side inside NVIDIA FLARE: a ModelController whose ``run()`` builds the FLARE
transport (``FlareTransport``) and calls fedumm's one job and round loop (``federation.run_job``).

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

import math
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController
from nvflare.fuel.utils import fobs
from transformers.utils import logging as hf_logging

from fedumm.config import RunConfig, save_config
from fedumm.data.federated import load_source
from fedumm.engines.nvflare import protocol as P
from fedumm.errors import FedummError
from fedumm.federation import FitReply, ModelHost, Server, SetupInfo, Transport, run_job
from fedumm.federation.setup import setup_from_replies
from fedumm.runlog import RunFolder
from fedumm.validation import load_run_config

ERROR_FILE = "fedumm_error.txt"
# Seconds the setup task waits for every client before the job fails naming the missing ones,
# and a round for its sampled ones when federation.round_timeout is null: generous for real
# models; engine.task_timeout sets it per job, 0 = no limit.
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
        task_timeout: seconds the setup task waits for every client, and a round for its sampled
            ones when federation.round_timeout is null; 0 = no limit.
        task_check_period: seconds between checks for finished tasks.
        """
        # Errors are ours to handle: a site whose result is an error is missing from its round
        # (FLARE's strict mode would end the job); _check names it when a task needs every site.
        super().__init__(persistor_id="", ignore_result_error=True, task_check_period=task_check_period)
        if data_placement not in ("partition", "site"):
            raise ValueError(f"data_placement must be 'partition' or 'site', got {data_placement!r}")
        self.config_file = config_file
        self.data_placement = data_placement
        self.task_timeout = task_timeout
        self.task_check_period = task_check_period
        # The task in flight's whole FLARE messages (serialized task data / results as FLARE's
        # server hands them over), task name -> direction -> client name -> bytes; the task data
        # every client of a round shares is serialized once.
        self._wire: dict[str, dict[str, dict[str, int]]] = {}
        self._wire_lock = threading.Lock()
        self._download_seen: tuple[Any, int] | None = None  # (the round's shared task content, its size)
        self._rounds: int | None = None
        self._errors: dict[str, Any] = {}  # client name -> its error result's return code (or reason), this task

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
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        if shareable is None or task not in (P.TRAIN_TASK, P.EXCHANGE_TASK):
            return
        peer = fl_ctx.get_peer_context()
        client = peer.get_identity_name() if peer is not None else ""
        try:
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
                self._wire.setdefault(task, {"download": {}, "upload": {}})[direction][client] = size
        except Exception as exc:  # measuring must never break a round; the record then lacks this client
            self.warning(f"could not measure the {direction} message of {client or '?'}: {exc}")

    def _take_wire(self, ids: dict[str, int], task: str = P.TRAIN_TASK) -> dict[str, Any]:
        """``task``'s FLARE message sizes since the last call by client id (and the total), for the
        record; every count starts afresh."""
        with self._wire_lock:
            wire = self._wire.pop(task, {"download": {}, "upload": {}})
            self._wire = {}
            self._download_seen = None
        out: dict[str, Any] = {
            d: {
                str(ids[name]): n
                for name, n in sorted(wire[d].items(), key=lambda kv: ids.get(kv[0], -1))
                if name in ids
            }
            for d in ("download", "upload")
        }
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
        return FLModel(
            params_type=ParamsType.FULL,
            params={P.PAYLOAD_KEY: P.pack(payload)},
            current_round=round_num,
            total_rounds=self._rounds,
            meta=meta,
        )

    def _accept_train_result(self, client_name: str, result, fl_ctx: FLContext, is_unknown_task: bool = False):
        # FLARE's hook for every result (errors included): remember an error so the site's
        # absence can be explained; FLARE then logs and drops the result (ignore_result_error).
        rc = result.get_return_code()
        if rc and rc != ReturnCode.OK and not is_unknown_task:
            self._errors[client_name] = rc
        return super()._accept_train_result(client_name, result, fl_ctx, is_unknown_task=is_unknown_task)

    def _absent(self, task: str, results: list[FLModel], targets: list[str], timeout: float) -> dict[str, str]:
        """Targets without a valid result, each with why (an error result or no answer)."""
        if self.abort_signal is not None and self.abort_signal.triggered:
            raise RuntimeError(f"{task}: the job was aborted")
        got = {r.meta.get("client_name") for r in results}
        waited = f"within {timeout:g}s" if timeout else "(no time limit)"
        return {
            name: f"answered with error {self._errors[name]}" if name in self._errors else f"no answer {waited}"
            for name in targets
            if name not in got
        }

    def _check(self, task: str, results: list[FLModel], targets: list[str]) -> list[FLModel]:
        """A task that needs every target (setup): fail naming the missing sites."""
        absent = self._absent(task, results, targets, self.task_timeout)
        if absent:
            why = "; ".join(f"{name}: {reason}" for name, reason in sorted(absent.items()))
            raise RuntimeError(
                f"{task}: {len(targets) - len(absent)} of {len(targets)} clients answered ({why}; "
                f"engine.task_timeout={self.task_timeout}s)"
            )
        return results

    def _send(self, task: str, targets: list[str], data: FLModel, timeout: float) -> list[FLModel]:
        """Send and wait up to ``timeout`` seconds (0 = no limit), returning as soon as every target
        answered; the valid results that came, a site that failed or stayed silent is logged and
        left out (the round loop records it as missing)."""
        self._errors = {}
        # FLARE's task timeout is whole seconds: round up, never to 0 (= no limit).
        results = self.send_model_and_wait(
            task_name=task, data=data, targets=targets, timeout=math.ceil(timeout) if timeout else 0
        )
        for name, reason in sorted(self._absent(task, results, targets, timeout).items()):
            self.warning(f"{task}: {name} is missing from this round: {reason}")
        return results

    def _collector(self, expected: int) -> tuple[list[FLModel], threading.Event, Any]:
        """(results, done, callback) for ``send_model``: done once ``expected`` results came."""
        results: list[FLModel] = []
        done = threading.Event()

        def collect(model: FLModel) -> None:
            results.append(model)
            if len(results) == expected:
                done.set()

        return results, done, collect

    def _wait(self, done: threading.Event) -> None:
        """Until every result came, the tasks ended (answered, failed or timed out) or the job aborted."""
        while not done.wait(0.05):
            if self.abort_signal is not None and self.abort_signal.triggered:
                break
            if self.get_num_standing_tasks() == 0 and not done.is_set():
                time.sleep(0.2)  # the last callback may still be running
                break

    def _send_async(self, task: str, targets: list[str], data: FLModel):
        """Send without blocking; returns a function that waits for every answer (``_check``)."""
        results, done, collect = self._collector(len(targets))
        self._errors = {}
        self.send_model(task_name=task, data=data, targets=targets, timeout=self.task_timeout, callback=collect)

        def wait() -> list[FLModel]:
            self._wait(done)
            return self._check(task, results, targets)

        return wait

    def _send_each(self, task: str, data: Mapping[str, FLModel], timeout: float, label: str) -> list[FLModel]:
        """Send each target its own data, all at once (one FLARE task per target: a task carries one
        payload), and wait up to ``timeout`` seconds (0 = no limit); the valid results that came. A
        site that failed (an error result, or ``META_ERROR``: its protocol step failed) or stayed
        silent is logged and left out."""
        results: list[FLModel] = []
        done = threading.Event()
        self._errors = {}

        def accept(model: FLModel) -> bool:
            if P.META_ERROR in model.meta:
                self._errors[model.meta.get("client_name")] = str(model.meta[P.META_ERROR])
            else:
                results.append(model)
            if len(results) + len(self._errors) == len(data):
                done.set()
            return P.META_ERROR not in model.meta  # False: FLARE logs the result as skipped

        for name, model in data.items():
            self.send_model(
                task_name=task,
                data=model,
                targets=[name],
                timeout=math.ceil(timeout) if timeout else 0,
                callback=accept,
            )
        self._wait(done)
        for name, reason in sorted(self._absent(task, results, list(data), timeout).items()):
            self.warning(f"{label}: {name} is missing from this round: {reason}")
        return results

    def _run(self, config_path: Path, out: Path) -> None:
        config = load_run_config(config_path)
        self._rounds = config.federation.rounds
        # The setup task goes out first, without waiting: the sites load their data and model
        # while the server builds its own.
        transport = FlareTransport(self, config)
        hf_logging.disable_progress_bar()
        if config.engine.torch_threads:
            torch.set_num_threads(config.engine.torch_threads)
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        host = ModelHost(config)  # the seeded initial adapter: what every engine starts from
        test = list(load_source(config.data, config.seed).test) if config.engine.server_eval else []
        server = Server.from_config(config, host.initial_state, config.federation.num_clients)
        run_job(config, transport, host, RunFolder(out), test, server, log=self.info)


class FlareTransport(Transport):
    """The round loop's clients as FLARE sites: ``setup`` and ``fit`` are FLARE tasks carrying
    fedumm's safetensors message; replies come back in the sampled order. Setup needs every
    site; a round waits up to ``federation.round_timeout`` (null: ``engine.task_timeout``) and
    returns the replies that came, without the sites that failed or stayed silent (asked again
    whenever sampled later). ``exchange`` carries a multi-step protocol's steps (secure
    aggregation) as ``EXCHANGE_TASK``s with the same wait, each site its own payload. Its hooks
    add the whole FLARE message bytes to each round's record (the exchange stages' under
    ``exchange``) and the site names to the summary."""

    concurrent = True  # sites train at the same time

    def __init__(self, controller: FedummController, config: RunConfig):
        self.controller = controller
        self.min_label_count = config.engine.min_label_count  # the k the setup replies must apply
        num_clients = config.federation.num_clients
        names = [c.name for c in controller.engine.get_clients()]
        if len(names) != num_clients:
            raise RuntimeError(
                f"federation.num_clients is {num_clients} but {len(names)} FLARE clients joined: {sorted(names)}"
            )
        self.ids = P.client_ids(names)
        self.name_of = {cid: name for name, cid in self.ids.items()}
        self.base_meta = {
            P.META_CLIENT_IDS: self.ids,
            P.META_NUM_CLIENTS: num_clients,
            P.META_PLACEMENT: controller.data_placement,
        }
        self.round_timeout = config.federation.round_timeout or controller.task_timeout
        self.wire: dict[str, Any] = {}  # the last fit's message sizes
        self.exchange_wire: dict[int, dict[str, Any]] = {}  # round -> stage -> its message sizes
        self._round: int | None = None  # the last fit's round
        controller.info(f"fedumm: setting up {num_clients} clients {sorted(names)}")
        self._wait_setup = controller._send_async(
            P.SETUP_TASK, sorted(names), controller._task_data(dict(self.base_meta))
        )

    @property
    def client_ids(self) -> list[int]:
        return sorted(self.ids.values())

    def setup(self) -> SetupInfo:
        # Checked before use: a malformed or oversized reply fails naming the site and the field.
        replies = {r.meta["client_name"]: r.meta.get(P.META_STATS) for r in self._wait_setup()}
        sites = [self.name_of[cid] for cid in self.client_ids]
        by_site = self.controller.data_placement == "site"
        return setup_from_replies(replies, sites, self.min_label_count, by_site)

    def fit(self, client_ids: Sequence[int], message: bytes, round_num: int) -> list[FitReply]:
        controller = self.controller
        meta = {**self.base_meta, P.META_ROUND: round_num}
        controller._take_wire(self.ids)  # start the round's count afresh
        self._round = round_num
        self.exchange_wire = {r: w for r, w in self.exchange_wire.items() if r == round_num}
        results = controller._send(
            P.TRAIN_TASK,
            [self.name_of[c] for c in client_ids],
            controller._task_data(meta, message, round_num),
            self.round_timeout,
        )
        by_id = {self.ids[r.meta["client_name"]]: r for r in results}
        wire = controller._take_wire(self.ids)
        # A late result of an earlier round passes the same upload filter: count this round's only.
        wire["upload"] = {cid: n for cid, n in wire["upload"].items() if int(cid) in by_id}
        wire["total"] = sum(wire["download"].values()) + sum(wire["upload"].values())
        self.wire = wire
        return [
            FitReply(
                cid,
                P.unpack(by_id[cid].params),
                int(by_id[cid].meta[P.META_NUM_SAMPLES]),
                dict(by_id[cid].meta.get(P.META_METRICS, {})),
            )
            for cid in client_ids
            if cid in by_id
        ]

    def exchange(self, stage: str, messages: Mapping[int, bytes], round_num: int) -> dict[int, bytes]:
        if not messages:  # everyone has left the protocol: nothing to send or wait for
            return {}
        controller = self.controller
        meta = {**self.base_meta, P.META_ROUND: round_num, P.META_STAGE: stage}
        controller._take_wire(self.ids, P.EXCHANGE_TASK)  # this stage's count starts afresh
        data = {self.name_of[cid]: controller._task_data(meta, message, round_num) for cid, message in messages.items()}
        results = controller._send_each(P.EXCHANGE_TASK, data, self.round_timeout, f"{P.EXCHANGE_TASK} {stage!r}")
        answers: dict[int, bytes] = {}
        for result in results:
            name = result.meta["client_name"]
            try:
                answers[self.ids[name]] = P.unpack(result.params)
            except FedummError as exc:  # a malformed answer: this site leaves the protocol, as a failed one
                controller.warning(f"{P.EXCHANGE_TASK} {stage!r}: {name} is missing from this round: {exc}")
        wire = controller._take_wire(self.ids, P.EXCHANGE_TASK)
        # A late answer of an earlier stage passes the same upload filter: count this stage's only.
        wire["upload"] = {cid: n for cid, n in wire["upload"].items() if int(cid) in answers}
        stages = self.exchange_wire.setdefault(round_num, {})
        if stage in stages:  # a stage run twice in a round: both count
            for direction in ("download", "upload"):
                for cid, n in stages[stage][direction].items():
                    wire[direction][cid] = wire[direction].get(cid, 0) + n
        wire["total"] = sum(wire["download"].values()) + sum(wire["upload"].values())
        stages[stage] = wire
        return {cid: answers[cid] for cid in messages if cid in answers}

    def round_extras(self) -> dict[str, Any]:
        # Whole FLARE messages (payload + FLARE's envelope), as serialized on the server; the
        # total covers the exchange stages too.
        wire = dict(self.wire)
        stages = self.exchange_wire.get(self._round)
        if stages:
            wire["exchange"] = stages
            wire["total"] = wire.get("total", 0) + sum(w["total"] for w in stages.values())
        return {"nvflare_bytes": wire}

    def summary_extras(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        extras: dict[str, Any] = {
            "engine": "nvflare",
            "nvflare_data_placement": self.controller.data_placement,
            "nvflare_clients": {str(cid): name for cid, name in self.name_of.items()},
        }
        # The largest whole FLARE message each way.
        sizes = {
            d: [n for r in records for n in r.get("nvflare_bytes", {}).get(d, {}).values()]
            for d in ("download", "upload")
        }
        if sizes["download"] and sizes["upload"]:
            extras["nvflare_message_bytes"] = {d: max(v) for d, v in sizes.items()}
        return extras
