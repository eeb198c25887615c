"""One client's side of a round, the same in every engine: load the global message, train
this round's units, evaluate locally, reply with the trained tensors as safetensors bytes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedumm import codec
from fedumm.config import RunConfig
from fedumm.data.federated import ClientData
from fedumm.errors import TrainingError
from fedumm.federation.host import ModelHost
from fedumm.federation.train import make_sample_dp
from fedumm.finetune import plan_for_round
from fedumm.metrics import get_task
from fedumm.strategies import ClientAlgorithm
from fedumm.types import State


def derive_seed(*parts: int) -> int:
    """A stable 32-bit seed from integers (run seed, round, client)."""
    return int(np.random.SeedSequence([p % 2**32 for p in parts]).generate_state(1)[0])


@dataclass
class FitReply:
    client_id: int
    payload: bytes
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the client could not train this round (the reason); no payload then


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
        self.sample_dp = make_sample_dp(config, len(data.train))  # DP-SGD's accountant spans rounds

    @property
    def client_id(self) -> int:
        return self.data.client_id

    def fit(self, message: bytes, round_num: int, progress: bool = False) -> FitReply:
        """Load the global state (and this client's kept-local units), train the units this
        round's plan trains, evaluate on the local test split, reply with the shared ones."""
        parts = codec.decode_message(message)
        global_state, server_extras = parts["state"], parts.get("extras", {})
        if not all(bool(torch.isfinite(t).all()) for t in [*global_state.values(), *server_extras.values()]):
            raise TrainingError(
                f"round {round_num} client {self.client_id}: the global message holds non-finite values (a diverged "
                "aggregate: lower federation.strategy.server_lr or bound updates with federation.validation)"
            )
        host = self.host
        plan = plan_for_round(self.config.finetune, round_num)
        host.configure(plan)
        host.set_state(global_state)
        if host.local_units:
            host.set_state(self.local_state or host.initial_local_state, host.local_units)
        trained_keys = list(host.parameters_of(plan.shared))
        round_global = {k: global_state[k] for k in trained_keys}
        hooks = self.algorithm.hooks(round_global, server_extras, self.client_state)
        seed = derive_seed(self.config.seed, round_num, self.client_id)
        result = host.train(
            self.data.train,
            self.config.train,
            seed,
            hooks,
            progress,
            description=f"round {round_num} client {self.client_id}",
            dp=self.sample_dp,
        )
        trained = host.get_state(plan.shared)
        extras, self.client_state = self.algorithm.finish(
            round_global, trained, server_extras, self.client_state, result, self.config.train.lr
        )
        if host.local_units:
            self.local_state = host.get_state(host.local_units)
        metrics: dict[str, float] = {
            "train_loss": result.mean_loss,
            "steps": result.steps,
            "train_seconds": result.seconds,
            **(result.privacy or {}),
        }
        if self.config.eval.clients and self.data.test:
            local = host.evaluate(self.data.test, self.config.eval.batch_size)
            primary = get_task(self.config.eval.task).primary_metric
            metrics[f"local_{primary}"] = local[primary]
            metrics["local_test_samples"] = local["n"]
        payload = codec.encode_message({"state": trained, "extras": extras}, self.config.federation.wire_dtype)
        return FitReply(self.client_id, payload, result.num_samples, metrics)
