"""SCAFFOLD: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning" (ICML), option II control-variate update.

Client i keeps a control variate c_i across rounds; the server keeps c. Each local step is
corrected by (c - c_i). After K local steps with learning rate eta_l:
    c_i+ = c_i - c + (x - y_i) / (K * eta_l)                         (option II)
and the client sends Δy_i = y_i - x and Δc_i = c_i+ - c_i. The server updates
    x <- x + eta_g * mean_i(Δy_i),    c <- c + (|S| / N) * mean_i(Δc_i).

Where the correction enters (``correction``):
  * "parameter" (default): after every optimizer step, θ <- θ - eta_l (c - c_i). Under plain
    SGD this is exactly the paper's step θ <- θ - eta_l (g - c_i + c). Under AdamW it keeps
    option II consistent: (x - y_i)/(K eta_l) is then the mean normalised Adam step plus
    (c - c_i), so c_i+ becomes the client's mean step direction and the correction has the
    scale of one step. This is what OpenFedLLM / FedVLMBench's SCAFFOLD does.
  * "gradient": the literal form, (c - c_i) added to the gradient after backward, before
    clipping and the optimizer. Exact for SGD without clipping; under AdamW the variates,
    built from normalised steps (O(1) per coordinate), swamp the raw gradients.

Client variates are kept for every key a client has trained (under finetune.two_stage the
connector's c_i survives the LoRA rounds). Server state: ``control/<key>`` (float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field

from fedumm.strategies.base import (
    ClientAlgorithm,
    ClientUpdate,
    State,
    Strategy,
    StrategyParams,
    deltas,
)
from fedumm.strategies.stateful import check_known_shapes, check_per_key_state, split_prefixed
from fedumm.types import LocalHooks, TrainResult, check_state_matches

PREFIX = "control/"
Correction = Literal["parameter", "gradient"]


def option_ii_variate(
    client_variate: State, server_variate: State, global_state: State, trained: State, steps: int, lr: float
) -> State:
    """c_i+ = c_i - c + (x - y) / (K * eta_l), in float32."""
    scale = 1.0 / (steps * lr)
    return {
        k: client_variate[k].float()
        - server_variate[k].float()
        + (global_state[k].float() - trained[k].float()) * scale
        for k in global_state
    }


class _CorrectionHooks(LocalHooks):
    def __init__(self, correction: State):
        self.correction = correction  # c - c_i per key, float32 on the CPU
        self._on_device: dict[str, torch.Tensor] | None = None

    def _moved(self, params) -> dict[str, torch.Tensor]:
        if self._on_device is None:  # once per local round
            self._on_device = {
                k: self.correction[k].to(p.device, p.dtype) for k, p in params.items() if k in self.correction
            }
        return self._on_device


class CorrectedGradientHooks(_CorrectionHooks):
    """correction=gradient: g <- g + (c - c_i) after backward, before clipping and the step."""

    def after_backward(self, params):
        for key, delta in self._moved(params).items():
            grad = params[key].grad
            if grad is not None:
                grad.add_(delta)


class CorrectedStepHooks(_CorrectionHooks):
    """correction=parameter: θ <- θ - lr (c - c_i) after each optimizer step."""

    @torch.no_grad()
    def after_step(self, params, lr):
        for key, delta in self._moved(params).items():
            params[key].add_(delta, alpha=-lr)


class ScaffoldClient(ClientAlgorithm):
    def __init__(self, correction: Correction = "parameter"):
        self.correction = correction

    def _client_variate(self, client_state: State, global_state: State) -> State:
        # c_i starts at zero for a client's first round (as in the paper).
        return {k: client_state.get(k, torch.zeros(v.shape)) for k, v in global_state.items()}

    def hooks(self, global_state, server_extras, client_state):
        sent = {k: server_extras[k] for k in global_state if k in server_extras}
        check_state_matches(
            global_state, sent, "SCAFFOLD: the server's control variate c does not match the trained state"
        )
        c_i = self._client_variate(client_state, global_state)
        correction = {k: server_extras[k].float() - c_i[k].float() for k in global_state}
        if self.correction == "gradient":
            return CorrectedGradientHooks(correction)
        return CorrectedStepHooks(correction)

    def finish(self, global_state, trained_state, server_extras, client_state, result: TrainResult, lr):
        c_i = self._client_variate(client_state, global_state)
        new_c_i = option_ii_variate(c_i, server_extras, global_state, trained_state, result.steps, lr)
        delta_c = {k: new_c_i[k] - c_i[k].float() for k in global_state}
        # Keys not trained this round (two_stage) keep their variate.
        return delta_c, {**client_state, **new_c_i}


class ScaffoldParams(StrategyParams):
    server_lr: float = Field(1.0, gt=0, description="Global step size eta_g.")
    correction: Correction = Field(
        "parameter",
        description="parameter: θ <- θ - lr (c - c_i) after each local step (exact SCAFFOLD under SGD, "
        "consistent under AdamW; OpenFedLLM's form); gradient: (c - c_i) added to the gradient before "
        "clipping and the optimizer (the paper's literal form; overwhelms AdamW).",
    )


class Scaffold(Strategy):
    name = "scaffold"
    needs_individual_updates = "each client's control-variate delta travels to the server in the clear"
    Params = ScaffoldParams

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.control: State = {}  # server control variate c, created lazily per key

    def _control_for(self, global_state: State) -> State:
        for key, value in global_state.items():
            self.control.setdefault(key, torch.zeros(value.shape, dtype=torch.float32))
        check_known_shapes(global_state, self.control, "SCAFFOLD control variate")
        return {k: self.control[k] for k in global_state}

    def server_extras(self, global_state: State, round_num: int) -> State:
        return dict(self._control_for(global_state))

    def client_algorithm(self) -> ClientAlgorithm:
        return ScaffoldClient(self.params.correction)

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        control = self._control_for(global_state)
        client_deltas = deltas(global_state, updates)
        for update in updates:
            check_state_matches(
                global_state,
                update.extras,
                f"SCAFFOLD: client {update.client_id} delta c (extras) does not match the trained state",
            )
        n = len(updates)
        new_state: State = {}
        for key, value in global_state.items():
            mean_dy = sum(d[key] for d in client_deltas) / n
            new_state[key] = (value.float() + self.params.server_lr * mean_dy).to(value.dtype)
            mean_dc = sum(u.extras[key].float() for u in updates) / n
            self.control[key] = control[key] + (n / self.num_clients) * mean_dc
        return new_state

    def state_dict(self) -> State:
        return {PREFIX + k: v.clone() for k, v in self.control.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], reference: State | None = None) -> None:
        control = split_prefixed(state, [PREFIX], self.name)[PREFIX]
        if reference is not None:
            check_per_key_state(reference, control, f"{self.name} server state {PREFIX}")
        self.control = control
