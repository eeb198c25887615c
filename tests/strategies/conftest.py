"""A toy client for the client halves of the algorithms: the real ClientRuntime.fit and
train_local around a one-tensor model whose loss is 0.5 * ||w - t||^2 (gradient w - t), so
every local step can be computed by hand."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fedumm import codec
from fedumm.adapters import copy_state, load_state
from fedumm.federation.train import train_local


class ToyModel(torch.nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(size))


class ToyBackend:
    device = torch.device("cpu")

    def training_session(self, seed, config):
        return contextlib.nullcontext()  # the Backend contract's hook around a local run

    def training_batch(self, samples):
        return {"t": torch.stack([torch.tensor(s["t"], dtype=torch.float32) for s in samples])}

    def to_device(self, batch):
        return batch

    def loss(self, model, batch):
        return 0.5 * ((model.w - batch["t"].mean(dim=0)) ** 2).sum()


class ToyHost:
    """The slice of ModelHost that ClientRuntime.fit uses, over ToyModel's one tensor 'w'."""

    local_units: list[str] = []
    per_task = False

    def __init__(self, size: int):
        self.model, self.backend = ToyModel(size), ToyBackend()

    def configure(self, plan):
        pass

    def parameters_of(self, units=None):
        return {"w": self.model.w}

    def set_state(self, state, units=None):
        load_state(self.parameters_of(), state, "toy state")

    def get_state(self, units=None):
        return copy_state(self.parameters_of())

    def train(self, samples, config, seed, hooks, progress, description, dp=None):
        return train_local(self.model, self.backend, samples, config, seed, hooks, progress, description, dp)


@pytest.fixture()
def toy_fit():
    """``toy_fit(algorithm, w, extras, train_overrides, client_state=None, target=(0, 0))`` ->
    (trained w, extras sent, runtime) after one ClientRuntime.fit round."""
    from fedumm.data.federated import ClientData
    from fedumm.federation import ClientRuntime
    from fedumm.validation import load_run_config

    def fit(algorithm, w, extras, train=(), client_state=None, target=(0.0, 0.0)):
        config = load_run_config(
            None,
            [
                "train.optimizer=sgd",
                "train.weight_decay=0",
                "train.max_grad_norm=null",
                "train.batch_size=1",
                "eval.clients=false",
                *train,
            ],
        )
        runtime = ClientRuntime(ClientData(0, [{"t": list(target)}], []), ToyHost(len(w)), config, algorithm)
        runtime.client_state = dict(client_state or {})
        message = codec.encode_message(
            {"state": {"w": torch.tensor(w)}, "extras": {k: torch.tensor(v) for k, v in extras.items()}}
        )
        reply = runtime.fit(message, round_num=1)
        parts = codec.decode_message(reply.payload)
        return parts["state"]["w"], parts["extras"], runtime

    return fit
