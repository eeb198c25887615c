"""The client side inside NVIDIA FLARE: fedumm's ``ClientRuntime`` behind the Client API.

``main`` runs in the FLARE client, either in its job process (in-process execution) or as the
external trainer process FLARE launches with ``engine.python`` / ``engine.client_command``. It
loops over ``flare.receive()`` / ``flare.send()``; each task's payload is fedumm's safetensors
message, handed to ``ClientRuntime.fit`` unchanged, and the reply's payload is the message
``fit`` produced. An exchange task (a multi-step protocol's step) goes to
``ClientRuntime.exchange`` the same way; a step that fails is answered as failed
(``protocol.META_ERROR``) and the site stays in the job.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedumm import codec
from fedumm.config import RunConfig
from fedumm.data.federated import ClientData, build_federated_data
from fedumm.engines.nvflare import protocol as P
from fedumm.errors import TrainingError
from fedumm.federation import ClientRuntime, ModelHost
from fedumm.federation.setup import data_stats
from fedumm.runlog import atomic_write_bytes
from fedumm.strategies import build_strategy
from fedumm.validation import load_run_config

log = logging.getLogger("fedumm.nvflare.client")
ERROR_FILE = "fedumm_error.txt"


class ClientSession:
    """One site's fedumm state for a job: its data, one ModelHost, its ClientRuntime.

    Built lazily from the first task's meta (client id, number of clients, data placement),
    so a client process restarted between rounds rebuilds itself from any task; the
    algorithm's per-client state (SCAFFOLD's control variate, kept-local units, the error
    feedback residual of federation.compression) is saved to
    the app folder after every round and restored on a rebuild.
    """

    def __init__(
        self,
        config: RunConfig,
        site: str,
        app_dir: Path,
        workspace_root: Path | None,
        environ: Mapping[str, str] | None = None,
    ):
        self.config = config
        self.site = site
        self.app_dir = app_dir
        self.workspace_root = workspace_root
        self.environ = os.environ if environ is None else environ
        self.runtime = None
        self.stats: dict[str, Any] = {}

    def _ensure(self, meta: Mapping[str, Any]) -> None:
        if self.runtime is not None:
            return
        config = self.config
        ids = meta[P.META_CLIENT_IDS]
        if self.site not in ids:
            raise RuntimeError(f"site {self.site} is not among the job's clients {sorted(ids)}")
        cid, num_clients = int(ids[self.site]), int(meta[P.META_NUM_CLIENTS])
        if config.engine.torch_threads:
            torch.set_num_threads(config.engine.torch_threads)
        if meta[P.META_PLACEMENT] == "partition":
            # The in-process split: every site derives the same partition from the run seed.
            federated = build_federated_data(config.data, num_clients, config.seed, task=config.eval.task)
            data, skipped = federated.clients[cid], federated.skipped_by_file
            source = f"partition of data.* (client {cid} of {num_clients})"
        else:
            site_config, source = P.load_site_config(
                self.site, self.workspace_root, config, self.environ, self.app_dir / "config"
            )
            train, test, skipped = P.load_site_rows(site_config, config.seed)
            if not train:
                raise RuntimeError(f"site {self.site}: its data config ({source}) gave no training rows")
            data = ClientData(cid, train, test)
        self.stats = data_stats(
            data.train, data.test, config.data, skipped, min_label_count=config.engine.min_label_count
        )
        host = ModelHost(config)
        strategy = build_strategy(config.federation.strategy, num_clients=num_clients)
        self.runtime = ClientRuntime(data, host, config, strategy.client_algorithm())
        self._restore_state()
        log.info(
            "fedumm client %s ready: client id %d, %d train / %d test rows from %s",
            self.site,
            cid,
            len(data.train),
            len(data.test),
            source,
        )

    @property
    def _state_path(self) -> Path:
        return self.app_dir / P.CLIENT_STATE_FILE

    def _restore_state(self) -> None:
        if self._state_path.is_file():
            parts = codec.decode_message(self._state_path.read_bytes())
            self.runtime.client_state = parts.get("client", {})
            self.runtime.local_state = parts.get("local", {})
            self.runtime.residual = parts.get("residual", {})

    def _save_state(self) -> None:
        runtime = self.runtime
        if not (runtime.client_state or runtime.local_state or runtime.residual):
            return
        parts = {"client": runtime.client_state, "local": runtime.local_state, "residual": runtime.residual}
        atomic_write_bytes(self._state_path, codec.encode_message(parts, "float32"))

    def setup(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        self._ensure(meta)
        return self.stats

    def fit(self, payload: bytes, meta: Mapping[str, Any]):
        self._ensure(meta)
        reply = self.runtime.fit(payload, int(meta[P.META_ROUND]), progress=False)
        self._save_state()
        return reply

    def exchange(self, payload: bytes, meta: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one exchange task, as ``FLModel`` arguments: the protocol's answer bytes, or
        why this site leaves the protocol (a ``TrainingError``: a malformed or out-of-order step, no
        protocol open), which the server counts as absent."""
        self._ensure(meta)
        round_num, stage = int(meta[P.META_ROUND]), str(meta[P.META_STAGE])
        reply_meta: dict[str, Any] = {P.META_ROUND: round_num, P.META_STAGE: stage}
        try:
            answer = self.runtime.exchange(stage, payload, round_num)
        except TrainingError as exc:
            log.warning("fedumm client %s leaves round %d's protocol at %r: %s", self.site, round_num, stage, exc)
            # The Client API sends a model only with params or metrics: a marker metric.
            return {"metrics": {"fedumm_failed": 1}, "meta": {**reply_meta, P.META_ERROR: str(exc)}}
        return {"params": {P.PAYLOAD_KEY: P.pack(answer)}, "current_round": round_num, "meta": reply_meta}


def tune_in_process_polling(interval: float) -> bool:
    """Shorten the in-process Client API's polling (task arrival on the trainer side, result
    pick-up on the executor side). FLARE 2.9 fixes both at 0.5 s with no setting, which adds
    up to a second to every round; this sets the two values it reads. Returns whether it
    applied (in-process execution only; a later FLARE without these attributes is left alone)."""
    from nvflare.client.api import get_context  # noqa: PLC0415 (nvflare: only inside a FLARE client)

    api = getattr(get_context(), "api", None)
    if type(api).__name__ != "InProcessClientAPI" or not hasattr(api, "result_check_interval"):
        return False
    api.result_check_interval = interval
    try:  # a FLARE version without this module keeps its own polling
        from nvflare.app_common.executors.client_api import in_process_backend  # noqa: PLC0415
    except ImportError:
        return True
    if hasattr(in_process_backend, "_RESULT_POLL_INTERVAL"):
        in_process_backend._RESULT_POLL_INTERVAL = interval
    return True


def _app_dir() -> Path:
    # FLARE runs custom/fedumm_client.py of the app folder (sys.argv[0] in both execution modes).
    return Path(sys.argv[0]).resolve().parent.parent


def main() -> None:
    import nvflare.client as flare  # noqa: PLC0415 (nvflare: only inside a FLARE client)
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType  # noqa: PLC0415

    app_dir = _app_dir()
    try:
        config = load_run_config(app_dir / "config" / P.CONFIG_FILE)
        flare.init()
        if tune_in_process_polling(config.engine.client_poll_interval):
            log.info("in-process Client API polls every %gs", config.engine.client_poll_interval)
        site = flare.get_site_name()
        # app folder = <site workspace>/<job id>/app_<site>
        session = ClientSession(config, site, app_dir, app_dir.parent.parent)
        while flare.is_running():
            model = flare.receive()
            if model is None:
                break
            task = flare.get_task_name()
            meta = model.meta or {}
            if task == P.SETUP_TASK:
                # The Client API sends a model only with params or metrics: a marker metric.
                flare.send(FLModel(metrics={"fedumm_ready": 1}, meta={P.META_STATS: session.setup(meta)}))
                continue
            if task == P.EXCHANGE_TASK:
                answer = session.exchange(P.unpack(model.params), meta)
                flare.send(FLModel(params_type=ParamsType.FULL, **answer) if "params" in answer else FLModel(**answer))
                continue
            reply = session.fit(P.unpack(model.params), meta)
            flare.send(
                FLModel(
                    params_type=ParamsType.FULL,
                    params={P.PAYLOAD_KEY: P.pack(reply.payload)},
                    current_round=int(meta[P.META_ROUND]),
                    meta={
                        P.META_NUM_SAMPLES: int(reply.num_samples),
                        P.META_METRICS: dict(reply.metrics),
                        P.META_ROUND: int(meta[P.META_ROUND]),
                    },
                )
            )
    except Exception as exc:
        # The FLARE log has the traceback; the driver shows this first line to the user.
        (app_dir / ERROR_FILE).write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        log.error("fedumm client failed: %s", traceback.format_exc())
        raise
