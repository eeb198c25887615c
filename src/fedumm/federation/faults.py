"""Simulated faults and attacks for the in-process engine: ``federation.faults`` (clients that
drop out, stragglers later than ``federation.round_timeout``) and ``federation.attack`` (clients
that send poisoned updates), drawn per client and round from the run seed and recorded in each
round's metrics.jsonl record (``faults``), for robustness research and tests.

Attacks, on an attacking client's reply from ``attack.from_round`` on (Δ = its update θ_k − θ):

- ``nan``: the first entry of every tensor becomes NaN;
- ``scale``: θ + factor·Δ (model replacement, Bagdasaryan et al. 2020);
- ``sign_flip``: θ − Δ;
- ``gaussian``: θ_k + N(0, std²) per entry;
- ``label_flip``: the client trains on answers shifted to the next answer in sorted order;
- ``inflate_samples``: the reply claims ``attack.samples`` rows.

Under ``federation.compression`` the poisoned state's delta is encoded again with the run's codec
(no error feedback), as an attacker running the same client code would send it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedumm import codec, compression
from fedumm.config import RunConfig
from fedumm.data.federated import ClientData
from fedumm.federation.client import FitReply, derive_seed
from fedumm.federation.transport import ClientStates, LocalTransport, Message, SetupInfo, Transport, message_for
from fedumm.finetune import plan_for_round
from fedumm.runlog import Checkpoint
from fedumm.types import DTYPES, State, state_delta

# Random streams apart from training's draws: faults, gaussian noise.
_FAULT_STREAM, _NOISE_STREAM = 0x6661756C, 0x6E6F6973


def flip_labels(rows: Sequence[dict]) -> list[dict]:
    """Rows whose answers move to the next distinct answer (sorted, cyclic): every label wrong."""
    answers = sorted({a for row in rows for a in [row["multiple_choice_answer"], *row.get("answers", [])]})
    shift = {a: answers[(i + 1) % len(answers)] for i, a in enumerate(answers)}
    return [
        {
            **row,
            "multiple_choice_answer": shift[row["multiple_choice_answer"]],
            **({"answers": [shift[a] for a in row["answers"]]} if "answers" in row else {}),
        }
        for row in rows
    ]


def poison(kind: str, state: State, global_state: State, config: RunConfig, seed: int) -> State:
    """An attacking client's trained tensors, as ``kind`` changes them."""
    attack = config.federation.attack
    if kind == "nan":
        out = {k: v.clone() for k, v in state.items()}
        for tensor in out.values():
            tensor.view(-1)[0] = float("nan")
        return out
    if kind == "scale":
        return {k: global_state[k] + attack.factor * (v - global_state[k]) for k, v in state.items()}
    if kind == "sign_flip":
        return {k: 2 * global_state[k] - v for k, v in state.items()}
    if kind == "gaussian":
        generator = torch.Generator().manual_seed(seed)
        return {k: v + attack.std * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    return state


class SimulatedFaults(Transport):
    """A ``LocalTransport`` whose clients drop out, straggle and attack as configured."""

    def __init__(self, inner: LocalTransport, config: RunConfig):
        self.inner, self.config = inner, config
        attack = config.federation.attack
        self.attackers = set(attack.clients) if attack.kind != "none" else set()
        self.clean: dict[int, ClientData] = {cid: inner.runtimes[cid].data for cid in self.attackers}
        self.flipped = (
            {cid: ClientData(cid, flip_labels(d.train), d.test) for cid, d in self.clean.items()}
            if attack.kind == "label_flip"
            else {}
        )
        self.extras: dict[str, Any] = {}

    @property
    def client_ids(self) -> list[int]:
        return self.inner.client_ids

    def setup(self) -> SetupInfo:
        return self.inner.setup()

    def held_client_states(self) -> ClientStates:
        return self.inner.held_client_states()

    def exchange(self, stage: str, messages: Mapping[int, bytes], round_num: int) -> dict[int, bytes]:
        # Faults act on fit: a client dropped or late there never joins the protocol's steps.
        return self.inner.exchange(stage, messages, round_num)

    def restore(self, checkpoint: Checkpoint) -> None:
        self.inner.restore(checkpoint)

    def _reaches_server(self, cid: int, round_num: int, late: list[int], dropped: list[int]) -> bool:
        faults, timeout = self.config.federation.faults, self.config.federation.round_timeout
        drop, slow = np.random.default_rng(derive_seed(self.config.seed, round_num, cid, _FAULT_STREAM)).random(2)
        if drop < faults.dropout:
            dropped.append(cid)
            return False
        if slow < faults.straggler_rate and timeout is not None and faults.straggler_delay > timeout:
            late.append(cid)  # its reply would come after the round closed: it is never awaited
            return False
        return True

    def fit(self, client_ids: Sequence[int], message: Message, round_num: int) -> list[FitReply]:
        attack = self.config.federation.attack
        late: list[int] = []
        dropped: list[int] = []
        asked = [cid for cid in client_ids if self._reaches_server(cid, round_num, late, dropped)]
        active = self.attackers if round_num >= attack.from_round else set()
        for cid, data in self.flipped.items():
            self.inner.runtimes[cid].data = data if cid in active else self.clean[cid]
        replies = self.inner.fit(asked, message, round_num)
        attacked = [r.client_id for r in replies if r.client_id in active and not r.error]
        for i, reply in enumerate(replies):
            if reply.client_id not in attacked:
                continue
            if attack.kind == "inflate_samples":
                replies[i] = FitReply(reply.client_id, reply.payload, attack.samples, reply.metrics)
            elif attack.kind != "label_flip":
                global_state = codec.decode_message(message_for(message, reply.client_id))["state"]
                seed = derive_seed(self.config.seed, round_num, reply.client_id, _NOISE_STREAM)
                payload = self._poisoned(reply.payload, global_state, round_num, seed)
                replies[i] = FitReply(reply.client_id, payload, reply.num_samples, reply.metrics)
        self.extras = {k: v for k, v in (("dropped", dropped), ("late", late), ("attacked", attacked)) if v}
        return replies

    def _poisoned(self, payload: bytes, global_state: State, round_num: int, seed: int) -> bytes:
        kind, wire = self.config.federation.attack.kind, self.config.federation.wire_dtype
        parts = codec.decode_message(payload)
        codec_ = self.inner.runtimes[self.client_ids[0]].compressor
        if codec_ is None:
            parts["state"] = poison(kind, parts["state"], global_state, self.config, seed)
            return codec.encode_message(parts, wire)
        trained = self.inner.host.parameters_of(plan_for_round(self.config.finetune, round_num).shared)
        shapes = {k: tuple(global_state[k].shape) for k in trained}
        state = {
            k: global_state[k] + d for k, d in compression.decode_delta(parts[compression.PART], codec_, shapes).items()
        }
        delta = state_delta(poison(kind, state, global_state, self.config, seed), global_state)
        parts[compression.PART] = compression.encode_delta(delta, codec_, DTYPES[wire], seed)
        return codec.encode_message(parts, wire, compression.metadata(codec_, shapes), exact_parts=(compression.PART,))

    def round_extras(self) -> dict[str, Any]:
        return {**self.inner.round_extras(), **({"faults": self.extras} if self.extras else {})}
