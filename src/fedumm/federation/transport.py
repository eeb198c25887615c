"""How the round loop reaches its clients: a ``Transport`` is injected into ``run_rounds``, so
the algorithm is written once and an engine only carries messages (Flower's grid,
NVFlare's ``send_model_and_wait``).

A transport answers four calls: ``client_ids``, ``setup()`` (what the clients tell the server
about their data before round 1: counts, never rows), ``fit(client_ids, message, round)``
(one safetensors message out, one ``FitReply`` per client back, in the order asked) and
``held_client_states()`` (the clients' state when the server process holds it, for the
checkpoint; None where the clients keep their own). Two documented hooks add an engine's
own facts without a second record builder: ``round_extras()`` goes into the round's record
(FLARE: whole message bytes on the wire) and ``summary_extras(records)`` into summary.json
(FLARE: site names, data placement).

``LocalTransport`` is the in-process one: ``ClientRuntime.fit`` called directly on one shared
``ModelHost``; with ``engine.parallel_clients`` > 1 it trains up to that many clients in one
joint update (``fedumm.federation.parallel``). Every engine uses it for the centralized baseline.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedumm.config import RunConfig
from fedumm.data.federated import ClientData
from fedumm.data.partition import PartitionStats
from fedumm.errors import TrainingError
from fedumm.federation.client import ClientRuntime, FitReply, LocalUpdate
from fedumm.federation.host import ModelHost
from fedumm.federation.parallel import ClientJob, ClientOutcome
from fedumm.runlog import Checkpoint
from fedumm.strategies import ClientAlgorithm
from fedumm.types import State

#: What one round sends: the same bytes to every client, or each client its own (client_ranks).
Message = bytes | Mapping[int, bytes]


def message_for(message: Message, client_id: int) -> bytes:
    return message if isinstance(message, bytes | bytearray) else message[client_id]


@dataclass
class SetupInfo:
    """What the server knows of the clients' data before round 1."""

    partition: PartitionStats  # sizes, label counts, modality counts, skipped rows
    answer_counts: dict[str, int]  # training answers pooled over the clients (the majority baseline)
    # The same by the rows' own task column ("": rows without one): multitask runs' baselines.
    task_answer_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def train_rows(self) -> int:
        return sum(self.answer_counts.values())


@dataclass
class ClientStates:
    """Per-client tensors the server process holds: algorithm state, kept-local units and
    error feedback residuals (``federation.compression.error_feedback``)."""

    client_states: dict[int, State]
    local_states: dict[int, State]
    residuals: dict[int, State] = field(default_factory=dict)


class Transport(ABC):
    """The round loop's view of its clients (see the module docstring)."""

    #: Whether the clients of a round run at the same time (FLARE sites) rather than one after
    #: another (in process); the round's time split takes the slowest client's seconds then.
    concurrent: bool = False

    @property
    @abstractmethod
    def client_ids(self) -> list[int]:
        """Every client's integer id, sorted."""

    @abstractmethod
    def setup(self) -> SetupInfo:
        """The clients' data statistics, once, before round 1."""

    @abstractmethod
    def fit(self, client_ids: Sequence[int], message: Message, round_num: int) -> list[FitReply]:
        """Send ``message`` to ``client_ids`` (a mapping: client id -> its own message, as under
        adapter.client_ranks); their replies in the same order. A client that
        died, stayed silent or answered after ``federation.round_timeout`` has no reply: the
        list is then shorter, and the loop records the missing clients."""

    def exchange(self, stage: str, messages: Mapping[int, bytes], round_num: int) -> dict[int, bytes]:
        """One extra step of a multi-step client protocol after ``fit`` (secure aggregation's key
        exchange, masked input and unmasking): client ``cid`` gets ``messages[cid]`` and its
        ``ClientRuntime.exchange`` answers. The answers of the clients that replied; a client that
        died, failed or stayed past ``federation.round_timeout`` is absent."""
        raise NotImplementedError(f"{type(self).__name__} carries no multi-step client protocol")

    def held_client_states(self) -> ClientStates | None:
        """The clients' state for the checkpoint; None = the clients keep it themselves."""
        return None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Give the clients their state from a resumed checkpoint (checked by ``Server.restore``)."""

    def round_extras(self) -> dict[str, Any]:
        """Hook: engine-specific keys for the record of the round ``fit`` just ran."""
        return {}

    def summary_extras(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Hook: engine-specific keys for summary.json."""
        return {}


class LocalTransport(Transport):
    """Clients as ``ClientRuntime`` objects in this process, sharing one frozen base model."""

    def __init__(
        self,
        clients: Sequence[ClientData],
        host: ModelHost,
        config: RunConfig,
        algorithm: ClientAlgorithm,
        partition: PartitionStats | None = None,
        progress: bool = False,
    ):
        self.runtimes = {c.client_id: ClientRuntime(c, host, config, algorithm) for c in clients}
        self.host = host
        self.config = config
        self.partition = partition
        self.progress = progress
        self.warned: set[str] = set()  # engine.parallel_clients: the fallback reasons already warned about

    @property
    def client_ids(self) -> list[int]:
        return sorted(self.runtimes)

    def setup(self) -> SetupInfo:
        if self.partition is None:
            raise ValueError("LocalTransport.setup: built without the partition statistics")
        rows = [row for r in self.runtimes.values() for row in r.data.train]
        by_task: dict[str, Counter[str]] = {}
        for row in rows:
            by_task.setdefault(str(row.get("task") or ""), Counter())[str(row["multiple_choice_answer"])] += 1
        answers = Counter(str(row["multiple_choice_answer"]) for row in rows)
        return SetupInfo(self.partition, dict(answers), {t: dict(c) for t, c in by_task.items()})

    def fit(self, client_ids: Sequence[int], message: Message, round_num: int) -> list[FitReply]:
        width = self.config.engine.parallel_clients
        if width > 1 and len(client_ids) > 1:
            blocker = (
                "each client gets a message of its own"
                if not isinstance(message, bytes | bytearray)
                else self.host.parallel_blocker(round_num)
            )
            if blocker is None:
                replies: list[FitReply] = []
                for start in range(0, len(client_ids), width):
                    replies += self._fit_together(client_ids[start : start + width], bytes(message), round_num)
                return replies
            if blocker not in self.warned:
                self.warned.add(blocker)
                warnings.warn(
                    f"engine.parallel_clients={width}: round {round_num} trains its clients one after another: "
                    f"{blocker}",
                    stacklevel=2,
                )
        return [self._fit_one(cid, message_for(message, cid), round_num) for cid in client_ids]

    def _fit_together(self, client_ids: Sequence[int], message: bytes, round_num: int) -> list[FitReply]:
        """Several clients' ``fit`` with one joint local update (``fedumm.federation.parallel``):
        each is prepared in turn, all train together, then each concludes from its own trained state."""
        if len(client_ids) == 1:
            return [self._fit_one(client_ids[0], message, round_num)]
        replies: dict[int, FitReply] = {}
        prepared: dict[int, tuple[LocalUpdate, ClientJob]] = {}
        for cid in client_ids:
            runtime = self.runtimes[cid]
            try:
                update = runtime.prepare(message, round_num)
            except TrainingError as exc:
                replies[cid] = FitReply(cid, b"", 0, error=str(exc))
                continue
            job = ClientJob(
                runtime.data.train, update.seed, update.hooks, self.host.trainable_state(), update.description
            )
            prepared[cid] = (update, job)
        try:
            outcomes = self.host.train_clients([job for _, job in prepared.values()], self.config.train, self.progress)
        except TrainingError as exc:  # the model cannot train these clients together: none of them trained
            outcomes = [ClientOutcome(error=str(exc))] * len(prepared)
        for (cid, (update, _)), outcome in zip(prepared.items(), outcomes):
            if outcome.error is not None:
                replies[cid] = FitReply(cid, b"", 0, error=outcome.error)
                continue
            try:
                self.host.load_trainable(outcome.state)
                replies[cid] = self.runtimes[cid].conclude(update, outcome.result)
            except TrainingError as exc:
                replies[cid] = FitReply(cid, b"", 0, error=str(exc))
        return [replies[cid] for cid in client_ids]

    def _fit_one(self, cid: int, message: bytes, round_num: int) -> FitReply:
        try:
            return self.runtimes[cid].fit(message, round_num, self.progress)
        except TrainingError as exc:  # this client's failure, not the federation's: its reply says why
            return FitReply(cid, b"", 0, error=str(exc))

    def exchange(self, stage: str, messages: Mapping[int, bytes], round_num: int) -> dict[int, bytes]:
        answers = {}
        for cid, message in messages.items():
            try:
                answers[cid] = self.runtimes[cid].exchange(stage, message, round_num)
            except TrainingError:  # this client drops out of the protocol; the others go on
                continue
        return answers

    def held_client_states(self) -> ClientStates:
        runtimes = self.runtimes.items()
        return ClientStates(
            {cid: r.client_state for cid, r in runtimes if r.client_state},
            {cid: r.local_state for cid, r in runtimes if r.local_state},
            {cid: r.residual for cid, r in runtimes if r.residual},
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        algorithm = next(iter(self.runtimes.values())).algorithm if self.runtimes else None
        feedback = self.config.federation.compression.error_feedback
        stateful = (
            self.host.local_units or feedback or (algorithm is not None and type(algorithm) is not ClientAlgorithm)
        )
        if stateful and not checkpoint.clients_saved:
            warnings.warn(
                f"{checkpoint.path}: no client state was saved with it (e.g. an NVIDIA FLARE run, whose "
                "sites keep theirs): clients restart their algorithm state, kept-local units and residuals",
                stacklevel=2,
            )
        for cid, state in checkpoint.client_states.items():
            self.runtimes[cid].client_state = dict(state)
        for cid, state in checkpoint.local_states.items():
            self.runtimes[cid].local_state = dict(state)
        for cid, state in checkpoint.residual_states.items():
            self.runtimes[cid].residual = dict(state)
