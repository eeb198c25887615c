"""One client's side of a round, the same in every engine: load the global message, train
this round's units, evaluate locally, reply with the trained tensors as safetensors bytes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fedumm import codec, compression
from fedumm.config import RunConfig
from fedumm.data.federated import ClientData
from fedumm.errors import TrainingError
from fedumm.federation.host import ModelHost
from fedumm.federation.privacy import UNCLIPPED_METRIC, ClientPrivacy, plan_privacy
from fedumm.federation.secure import SAMPLE_SCALE_KEY, pack
from fedumm.federation.train import make_sample_dp, plan_steps
from fedumm.finetune import plan_for_round
from fedumm.lowrank import FROZEN_DELTA_PREFIX, state_rank, truncate
from fedumm.privacy.secagg import SecAggClient
from fedumm.strategies import ClientAlgorithm, LocalContext
from fedumm.types import DTYPES, LocalHooks, State, TrainResult, derive_seed, state_delta


class ProtocolClient(Protocol):
    """A client's half of a multi-step protocol (``fedumm.privacy.secagg.SecAggClient``)."""

    def handle(self, stage: str, message: bytes) -> bytes: ...


#: The random stream of stochastic rounding (federation.compression), apart from training's draws.
COMPRESSION_STREAM = 0x636F6D70

#: adapter.per_task: the reply metric ``trained_rows.<adapter>`` = the rows that trained that adapter
#: this round (0: it did not train it, and its tensors are the global ones).
TRAINED_ROWS_PREFIX = "trained_rows."

#: The reply metrics that say nothing about a client's rows (kept when the server is not trusted).
PUBLIC_METRICS = (
    "steps",
    "train_seconds",
    "eval_seconds",
    "serialise_seconds",
    "dp_epsilon",
    "dp_noise_multiplier",
    "dp_sample_rate",
)


def public_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k in PUBLIC_METRICS}


@dataclass
class FitReply:
    client_id: int
    payload: bytes
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the client could not train this round (the reason); no payload then


@dataclass
class LocalUpdate:
    """What ``ClientRuntime.prepare`` sets up for one local update and ``conclude`` needs after it."""

    round_num: int
    shared: list[str]  # the units whose trained tensors travel
    rank: int | None  # the LoRA rank of the global state (adapter.client_ranks), None without LoRA
    round_global: State  # the global tensors of the units trained and shared this round
    server_extras: State  # the algorithm's tensors from the server (SCAFFOLD's c)
    hooks: LocalHooks
    seed: int
    description: str
    decode_seconds: float  # reading the global message (serialisation's share of the round time)


class ClientRuntime:
    """One client's side of a round. Holds its data, its algorithm's client half and any
    per-client state that must persist between rounds (e.g. SCAFFOLD's control variate)."""

    def __init__(self, data: ClientData, host: ModelHost, config: RunConfig, algorithm: ClientAlgorithm | None = None):
        self.data = data
        self.host = host
        self.config = config
        self.algorithm = algorithm or ClientAlgorithm()
        self.client_state: State = {}  # the algorithm's per-client tensors
        self.local_state: State = {}  # kept-local units (personalisation)
        # federation.compression: the codec, and error feedback's residual (what was not sent yet).
        settings = config.federation.compression
        self.compressor = compression.build_codec(settings.codec, settings.topk_fraction)
        self.residual: State = {}
        # The open multi-step protocol of this round (secure aggregation), set by ``fit``.
        self.protocol: ProtocolClient | None = None
        plan = plan_privacy(config)
        self.privacy = ClientPrivacy(plan, config.seed, data.client_id) if plan is not None else None
        self.secure = config.privacy.secure_aggregation
        self.sample_dp = make_sample_dp(config, len(data.train))  # DP-SGD's accountant spans rounds

    @property
    def client_id(self) -> int:
        return self.data.client_id

    def exchange(self, stage: str, message: bytes, round_num: int) -> bytes:
        """Answer one step of the round's multi-step protocol (``Transport.exchange``)."""
        if self.protocol is None:
            raise TrainingError(f"round {round_num} client {self.client_id}: no protocol is open for stage {stage!r}")
        try:
            return self.protocol.handle(stage, message)
        except ValueError as exc:  # a malformed or out-of-order message: this client leaves the protocol
            raise TrainingError(f"round {round_num} client {self.client_id}: stage {stage!r}: {exc}") from exc

    def fit(self, message: bytes, round_num: int, progress: bool = False) -> FitReply:
        """Load the global state (and this client's kept-local units), train the units this
        round's plan trains, evaluate on the local test split, reply with the shared ones."""
        update = self.prepare(message, round_num)
        result = self.host.train(
            self.data.train,
            self.config.train,
            update.seed,
            update.hooks,
            progress,
            description=update.description,
            dp=self.sample_dp,
        )
        return self.conclude(update, result)

    def prepare(self, message: bytes, round_num: int) -> LocalUpdate:
        """The first half of ``fit``: load the global message (and kept-local units) into the host
        and set up this round's hooks and seed; the host then holds this client's starting state."""
        decode_start = time.perf_counter()
        parts = codec.decode_message(message)
        decode_seconds = time.perf_counter() - decode_start
        global_state, server_extras = parts["state"], parts.get("extras", {})
        prefix = FROZEN_DELTA_PREFIX  # a dense ΔW the strategy adds to the base (FLoRA), not the algorithm's
        frozen = {k.removeprefix(prefix): v for k, v in server_extras.items() if k.startswith(prefix)}
        server_extras = {k: v for k, v in server_extras.items() if not k.startswith(prefix)}
        if not all(bool(torch.isfinite(t).all()) for t in [*global_state.values(), *server_extras.values()]):
            raise TrainingError(
                f"round {round_num} client {self.client_id}: the global message holds non-finite values (a diverged "
                "aggregate: lower federation.strategy.server_lr or bound updates with federation.validation)"
            )
        host = self.host
        plan = plan_for_round(self.config.finetune, round_num)
        host.configure(plan)
        if frozen:  # a strategy with a frozen ΔW (FLoRA) sends it in every message
            host.set_frozen_delta(frozen)
        host.set_state(global_state)  # a rank below the host's (adapter.client_ranks) trains masked
        rank = state_rank(global_state)
        if host.local_units:
            host.set_state(self.local_state or host.initial_local_state, host.local_units)
        trained_keys = list(host.parameters_of(plan.shared))
        round_global = {k: global_state[k] for k in trained_keys}
        context = LocalContext(
            plan_steps(len(self.data.train), self.config.train),
            host.lora_base_weights(trained_keys) if self.algorithm.needs_base_weights else {},
        )
        hooks = self.algorithm.local_hooks(round_global, server_extras, self.client_state, context)
        seed = derive_seed(self.config.seed, round_num, self.client_id)
        description = f"round {round_num} client {self.client_id}"
        return LocalUpdate(
            round_num, plan.shared, rank, round_global, server_extras, hooks, seed, description, decode_seconds
        )

    def conclude(self, update: LocalUpdate, result: TrainResult) -> FitReply:
        """The second half of ``fit``, with the host holding this client's trained state: the
        algorithm's finish, local evaluation, privacy and the reply's bytes."""
        host, round_num, round_global = self.host, update.round_num, update.round_global
        trained = host.get_state(update.shared)
        if update.rank is not None and update.rank != host.lora_rank:
            trained = truncate(trained, update.rank)  # only this client's own components travel
        extras, self.client_state = self.algorithm.finish(
            round_global, trained, update.server_extras, self.client_state, result, self.config.train.lr
        )
        trained = self.algorithm.reply_state(round_global, trained)
        if host.local_units:
            self.local_state = host.get_state(host.local_units)
        metrics: dict[str, float] = {
            "train_loss": result.mean_loss,
            "steps": result.steps,
            "train_seconds": result.seconds,
            **(result.privacy or {}),
        }
        if host.per_task:
            metrics.update({TRAINED_ROWS_PREFIX + name: n for name, n in host.task_rows(self.data.train).items()})
        eval_start = time.perf_counter()
        if self.config.eval.clients and self.data.test:
            local = host.evaluate(self.data.test, self.config.eval.batch_size)
            primary = host.evaluation.primary_metric
            metrics[f"local_{primary}"] = local[primary]
            metrics["local_test_samples"] = local["n"]
        metrics["eval_seconds"] = time.perf_counter() - eval_start
        trained, metrics = self._protect(
            round_global, trained, update.server_extras, metrics, result.num_samples, round_num
        )
        encode_start = time.perf_counter()
        payload = self._payload(round_global, trained, extras, round_num)
        metrics["serialise_seconds"] = update.decode_seconds + time.perf_counter() - encode_start
        return FitReply(self.client_id, payload, result.num_samples, metrics)

    def _payload(self, round_global: State, trained: State, extras: State, round_num: int) -> bytes:
        """The reply's bytes: the trained tensors, or under ``federation.compression`` the codec's
        fields of their delta from the global state (plus the residual, with error feedback)."""
        wire = self.config.federation.wire_dtype
        if self.compressor is None:
            return codec.encode_message({"state": trained, "extras": extras}, wire)
        feedback = self.config.federation.compression.error_feedback
        seed = derive_seed(self.config.seed, round_num, self.client_id, COMPRESSION_STREAM)
        delta = state_delta(trained, round_global)
        fields, _, residual = compression.compress(
            delta, self.compressor, DTYPES[wire], seed, self.residual if feedback else None
        )
        if residual is not None:
            self.residual = residual
        shapes = {k: tuple(v.shape) for k, v in delta.items()}
        meta = compression.metadata(self.compressor, shapes)
        return codec.encode_message(
            {compression.PART: fields, "extras": extras}, wire, meta, exact_parts=(compression.PART,)
        )

    def _protect(
        self,
        round_global: State,
        trained: State,
        server_extras: State,
        metrics: dict[str, float],
        num_samples: int,
        round_num: int,
    ) -> tuple[State, dict[str, float]]:
        """What of the trained units leaves the site: under client-level DP the clipped (and for
        local or distributed DP, noised) update; under secure aggregation nothing (the update
        waits for the protocol's masked-input step) and no data-dependent metric."""
        self.protocol = None
        privacy = self.privacy
        if privacy is None and self.secure is None:
            # DP-SGD guards the rows against the server too: its loss and scores would not be noised.
            return trained, public_metrics(metrics) if self.sample_dp is not None else metrics
        if privacy is not None:
            delta, dp_metrics = privacy.privatize(round_global, trained, server_extras, round_num)
        else:
            delta = state_delta(trained, round_global)
            dp_metrics = {}
        if self.secure is None:
            state = {k: round_global[k].float() + delta[k] for k in round_global}
            # A local-DP client's server is not trusted: its scores would leak what its noise hides.
            kept = metrics if privacy.plan.mechanism == "central" else public_metrics(metrics)
            return state, {**kept, **dp_metrics}
        if privacy is not None:
            weight = 1.0  # DP-FedAvg: every client counts once
        else:
            scale = float(server_extras[SAMPLE_SCALE_KEY][0]) if SAMPLE_SCALE_KEY in server_extras else num_samples
            weight = min(num_samples, scale) / scale
        adaptive = privacy is not None and privacy.plan.adaptive
        vector = pack(delta, weight, dp_metrics.get(UNCLIPPED_METRIC) if adaptive else None)
        self.protocol = SecAggClient(self.client_id, vector)
        return {}, public_metrics(metrics)
