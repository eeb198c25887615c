"""SCAFFOLD: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning" (ICML), option II control-variate update.

Client i keeps a control variate c_i across rounds; the server keeps c. Local steps use the
corrected gradient g - c_i + c. After K local steps with learning rate eta_l:
    c_i+ = c_i - c + (x - y_i) / (K * eta_l)                         (option II)
and the client sends Δy_i = y_i - x and Δc_i = c_i+ - c_i. The server updates
    x <- x + eta_g * mean_i(Δy_i),    c <- c + (|S| / N) * mean_i(Δc_i).
With an adaptive local optimizer (AdamW here) the option-II estimate is the usual heuristic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from fedumm.strategies.base import (
    ClientAlgorithm,
    ClientUpdate,
    State,
    Strategy,
    StrategyParams,
    check_same_keys,
    deltas,
)
from fedumm.train import LocalHooks, TrainResult


def option_ii_variate(
    client_variate: State, server_variate: State, global_state: State, trained: State, steps: int, lr: float
) -> State:
    """c_i+ = c_i - c + (x - y) / (K * eta_l), in float32."""
    scale = 1.0 / (steps * lr)
    return {
        k: client_variate[k].float() - server_variate[k].float()
        + (global_state[k].float() - trained[k].float()) * scale
        for k in global_state
    }


class CorrectedGradientHooks(LocalHooks):
    """Adds (c - c_i) to each gradient after backward, before clipping and the step."""

    def __init__(self, correction: State):
        self.correction = correction
        self._on_device: dict[str, torch.Tensor] | None = None

    def after_backward(self, params):
        if self._on_device is None:
            self._on_device = {k: self.correction[k].to(p.device, p.dtype) for k, p in params.items()
                               if k in self.correction}
        for key, delta in self._on_device.items():
            grad = params[key].grad
            if grad is not None:
                grad.add_(delta)


class ScaffoldClient(ClientAlgorithm):
    def _client_variate(self, client_state: State, global_state: State) -> State:
        # c_i starts at zero for a client's first round (as in the paper).
        return {k: client_state.get(k, torch.zeros(v.shape)) for k, v in global_state.items()}

    def hooks(self, global_state, server_extras, client_state):
        c_i = self._client_variate(client_state, global_state)
        return CorrectedGradientHooks({k: server_extras[k].float() - c_i[k].float() for k in global_state})

    def finish(self, global_state, trained_state, server_extras, client_state, result: TrainResult, lr):
        c_i = self._client_variate(client_state, global_state)
        new_c_i = option_ii_variate(c_i, server_extras, global_state, trained_state, result.steps, lr)
        delta_c = {k: new_c_i[k] - c_i[k].float() for k in global_state}
        return delta_c, new_c_i


class ScaffoldParams(StrategyParams):
    server_lr: float = Field(1.0, gt=0, description="Global step size eta_g.")


class Scaffold(Strategy):
    name = "scaffold"
    Params = ScaffoldParams

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.control: State = {}  # server control variate c, created lazily per key

    def _control_for(self, global_state: State) -> State:
        for key, value in global_state.items():
            self.control.setdefault(key, torch.zeros(value.shape, dtype=torch.float32))
        return {k: self.control[k] for k in global_state}

    def server_extras(self, global_state: State, round_num: int) -> State:
        return dict(self._control_for(global_state))

    def client_algorithm(self) -> ClientAlgorithm:
        return ScaffoldClient()

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        control = self._control_for(global_state)
        client_deltas = deltas(global_state, updates)
        check_same_keys([u.extras for u in updates], "SCAFFOLD delta c")
        n = len(updates)
        new_state: State = {}
        for key, value in global_state.items():
            mean_dy = sum(d[key] for d in client_deltas) / n
            new_state[key] = (value.float() + self.params.server_lr * mean_dy).to(value.dtype)
            mean_dc = sum(u.extras[key].float() for u in updates) / n
            self.control[key] = control[key] + (n / self.num_clients) * mean_dc
        return new_state

    def state_dict(self) -> State:
        return {f"control/{k}": v.clone() for k, v in self.control.items()}

    def load_state_dict(self, state):
        self.control = {k.removeprefix("control/"): v.float().clone() for k, v in state.items()}
