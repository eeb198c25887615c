"""Round logic shared by every engine: ``ClientRuntime.fit``/``evaluate`` and ``Server``.

Messages between server and clients are safetensors bytes (``fedumm.codec``), so the byte
counts reported are those of the real payload. No engine is imported here: the in-process
simulation and the NVIDIA FLARE engine both drive these classes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedumm import codec
from fedumm.adapters import apply_lora, get_adapter_state, set_adapter_state
from fedumm.config import FederationConfig, RunConfig, TrainConfig
from fedumm.data.federated import ClientData
from fedumm.evaluate import summarize
from fedumm.models.base import Backend
from fedumm.models.registry import get_backend
from fedumm.strategies import ClientAlgorithm, ClientUpdate, State, Strategy
from fedumm.train import LocalHooks, TrainResult, train_local


def derive_seed(*parts: int) -> int:
    """A stable 32-bit seed from integers (run seed, round, client)."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


def clients_per_round(config: FederationConfig, num_clients: int) -> int:
    """ceil(fraction_fit * K), at least min_fit_clients, at most K."""
    return min(num_clients, max(config.min_fit_clients, math.ceil(config.fraction_fit * num_clients)))


class ModelHost:
    """One frozen base model wrapped with LoRA. Clients borrow it: their adapter states are
    swapped in and out, so memory does not grow with the number of clients."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.backend: Backend = get_backend(config.model.backend)(config.model)
        torch.manual_seed(config.seed)  # LoRA A matrices are initialised randomly
        self.model = apply_lora(self.backend.load(), config.adapter, self.backend.lora_target_regex(config.adapter))
        self.model.eval()
        self.initial_state: State = get_adapter_state(self.model)

    def get_state(self) -> State:
        return get_adapter_state(self.model)

    def set_state(self, state: State) -> None:
        set_adapter_state(self.model, state)

    def train(self, samples: Sequence[dict], config: TrainConfig, seed: int, hooks: LocalHooks | None,
              progress: bool, description: str) -> TrainResult:
        return train_local(self.model, self.backend, samples, config, seed, hooks, progress, description)

    def evaluate(self, samples: Sequence[dict], batch_size: int) -> dict:
        """Generate answers for ``samples`` with the current adapter and score them."""
        if not samples:
            return summarize([])
        self.model.eval()
        predictions: list[str] = []
        for start in range(0, len(samples), batch_size):
            predictions += self.backend.predict(self.model, samples[start : start + batch_size])
        return summarize(dict(row, prediction=p) for row, p in zip(samples, predictions))


@dataclass
class FitReply:
    client_id: int
    payload: bytes
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class ClientRuntime:
    """One client's side of a round. Holds its data, its algorithm's client half and any
    per-client state that must persist between rounds (e.g. SCAFFOLD's control variate)."""

    def __init__(self, data: ClientData, host: ModelHost, config: RunConfig,
                 algorithm: ClientAlgorithm | None = None):
        self.data = data
        self.host = host
        self.config = config
        self.algorithm = algorithm or ClientAlgorithm()
        self.client_state: State = {}

    @property
    def client_id(self) -> int:
        return self.data.client_id

    def fit(self, message: bytes, round_num: int, progress: bool = False) -> FitReply:
        """Load the global state, train locally, evaluate on the local test split, reply."""
        parts = codec.decode_message(message)
        global_state, server_extras = parts["state"], parts.get("extras", {})
        self.host.set_state(global_state)
        hooks = self.algorithm.hooks(global_state, server_extras, self.client_state)
        seed = derive_seed(self.config.seed, round_num, self.client_id)
        result = self.host.train(
            self.data.train, self.config.train, seed, hooks, progress,
            description=f"round {round_num} client {self.client_id}",
        )
        trained = self.host.get_state()
        extras, self.client_state = self.algorithm.finish(
            global_state, trained, server_extras, self.client_state, result, self.config.train.lr
        )
        metrics: dict[str, float] = {
            "train_loss": result.mean_loss,
            "steps": result.steps,
            "train_seconds": result.seconds,
        }
        if self.config.eval.clients and self.data.test:
            local = self.host.evaluate(self.data.test, self.config.eval.batch_size)
            metrics["local_vqa_accuracy"] = local["vqa_accuracy"]
            metrics["local_test_samples"] = local["n"]
        payload = codec.encode_message({"state": trained, "extras": extras})
        return FitReply(self.client_id, payload, result.num_samples, metrics)


class Server:
    """Holds the global state and the strategy; samples clients, broadcasts, aggregates."""

    def __init__(self, strategy: Strategy, initial_state: State, config: FederationConfig, seed: int):
        self.strategy = strategy
        self.global_state: State = {k: v.clone() for k, v in initial_state.items()}
        self.config = config
        self.seed = seed

    def sample_clients(self, round_num: int, client_ids: Sequence[int]) -> list[int]:
        count = clients_per_round(self.config, len(client_ids))
        if count == len(client_ids):
            return list(client_ids)
        rng = np.random.default_rng(derive_seed(self.seed, round_num, 7919))
        return sorted(rng.choice(list(client_ids), size=count, replace=False).tolist())

    def broadcast(self, round_num: int) -> bytes:
        """The message every sampled client receives: global state + strategy extras."""
        extras = self.strategy.server_extras(self.global_state, round_num)
        return codec.encode_message({"state": self.global_state, "extras": extras})

    def aggregate(self, replies: Sequence[FitReply], round_num: int) -> State:
        updates = []
        for reply in replies:
            parts = codec.decode_message(reply.payload)
            updates.append(ClientUpdate(reply.client_id, reply.num_samples, parts["state"],
                                        dict(reply.metrics), parts.get("extras", {})))
        self.global_state = self.strategy.aggregate(self.global_state, updates, round_num)
        return self.global_state
