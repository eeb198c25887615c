"""FedAdam, FedYogi and FedAdagrad: Reddi et al. 2021, "Adaptive Federated Optimization"
(ICLR), Algorithm 2. The server treats the mean client delta as a pseudo-gradient and applies
an adaptive optimizer to it; the clients train as in FedAvg. Three registered names share one
numeric core (``fedopt_step``).

Variant "paper" (default), per tensor, all in float32:
    Δ = sum_k n_k (θ_k − θ) / sum_k n_k                  sample-weighted mean client delta
    m <- beta1 m + (1 − beta1) Δ                          m_0 = 0
    v <- v + Δ²                                           FedAdagrad
    v <- beta2 v + (1 − beta2) Δ²                         FedAdam
    v <- v − (1 − beta2) Δ² sign(v − Δ²)                  FedYogi
    θ <- θ + eta m / (sqrt(v) + tau)                      v_0 = tau² (Algorithm 2: v_{-1} >= tau²)
Algorithm 2 writes the plain mean (1/|S|) sum_k Δ_k; we weight by sample count as FedAvg does
here (identical for equal-sized clients). The paper has no bias correction; the option
``bias_correction=true`` (default false) divides m by (1 − beta1^t) and, for Adam and Yogi, v
by (1 − beta2^t), t = the number of updates that tensor has had.

Variant "openfedllm" reproduces the seed benchmarks' code (OpenFedLLM / FedVLMBench), which
differs from the paper variant in three ways:
  * Δ is the unweighted mean of the client deltas;
  * m = Δ on a tensor's first update (not (1 − beta1) Δ), and FedAdagrad keeps no momentum
    at all (m = Δ every round, beta1 unused);
  * the second moment is driven by m² instead of Δ²:  Adam v <- beta2 v + (1 − beta2) m²,
    Yogi v <- v − (1 − beta2) m² sign(v − m²), Adagrad v <- v + m² (= Δ² there).
It has no bias correction either; v_0 = tau² and the θ update are as above.
Their defaults are eta = tau = 1e-3 and beta1 = 0.9 (set them to reproduce their runs).

Once |Δ| >> tau the step per coordinate is about eta whatever the scale of Δ (FedAdam,
FedYogi), so eta should be of the order of a client's movement per round (about lr × local
steps); FedAdagrad's growing v makes its step 0.1 eta in round 1 and eta / sqrt(t) later, so its
default eta is 10x theirs (0.1 against 0.01). 0.01 fits LoRA on real VLMs (lr ~1e-4); on the
tiny quickstart (lr 5e-3, ~25 local steps, 8 rounds) FedAdam reaches 0.23 / 0.28 global VQA
accuracy at eta 0.01 (Dirichlet 0.1 / 1.0), 0.37 / 0.44 at 0.03 and 0.38 / 0.44 at 0.1, and
diverges at 0.3; FedAdagrad 0.01 / 0.02 at eta 0.01 and 0.40 / 0.41 at 0.1 (bench/algorithms.py).

Server state (float32, created the first time a key is trained, since clients may train a
subset of the tensors in a round), in ``state_dict`` as ``m/<key>``, ``v/<key>`` and
``step/<key>`` (updates so far, a 1-element tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from fedumm.strategies.base import ClientUpdate, State, Strategy, StrategyParams
from fedumm.strategies.stateful import check_known_shapes, check_per_key_state, mean_delta, split_prefixed

Rule = Literal["adagrad", "adam", "yogi"]
Variant = Literal["paper", "openfedllm"]
PREFIXES = ("m/", "v/", "step/")


def fedopt_step(
    x: torch.Tensor,
    delta: torch.Tensor,
    m: torch.Tensor | None,
    v: torch.Tensor | None,
    step: int,
    *,
    rule: Rule,
    variant: Variant = "paper",
    eta: float,
    beta1: float,
    beta2: float | None,
    tau: float,
    bias_correction: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One server update of one tensor: (new θ, new m, new v), all float32.

    ``m``/``v`` are None before the tensor's first update (then m_0 = 0, v_0 = tau²);
    ``step`` is the 1-based index of this update (only used for bias correction)."""
    x, delta = x.float(), delta.float()
    first = m is None
    m_prev = torch.zeros_like(delta) if first else m.float()
    v_prev = torch.full_like(delta, tau * tau) if v is None else v.float()

    if variant == "paper":
        m_new = beta1 * m_prev + (1 - beta1) * delta
        drive = delta * delta
    else:  # openfedllm
        m_new = delta.clone() if (first or rule == "adagrad") else beta1 * m_prev + (1 - beta1) * delta
        drive = m_new * m_new

    if rule == "adagrad":
        v_new = v_prev + drive
    elif rule == "adam":
        v_new = beta2 * v_prev + (1 - beta2) * drive
    elif rule == "yogi":
        v_new = v_prev - (1 - beta2) * drive * torch.sign(v_prev - drive)
    else:
        raise ValueError(f"unknown FedOpt rule {rule!r}")

    m_hat, v_hat = m_new, v_new
    if bias_correction:
        m_hat = m_new / (1 - beta1**step)
        if rule != "adagrad":  # Adagrad's v is a sum, not an average: nothing to correct
            v_hat = v_new / (1 - beta2**step)
    x_new = x + eta * m_hat / (torch.sqrt(v_hat) + tau)
    return x_new, m_new, v_new


class FedAdagradParams(StrategyParams):
    eta: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Server learning rate eta. FedAdagrad's v sums Δ², so a steady Δ moves each coordinate about "
        "0.1 eta in round 1 (m starts at 0, beta1 0.9) and eta / sqrt(t) by round t: 10x the FedAdam/FedYogi eta "
        "for the same step (0.1 is also Flower's default). Aim the step at a client's movement per round "
        "(~ train.lr x local steps).",
    )
    beta1: float = Field(
        0.9, ge=0, lt=1, description="First-moment decay beta1 (unused by FedAdagrad in variant openfedllm)."
    )
    tau: float = Field(1e-3, gt=0, le=10, description="Adaptivity tau (epsilon); v starts at tau².")
    variant: Variant = Field(
        "paper",
        description="'paper': Reddi et al. Algorithm 2 on the sample-weighted mean delta; 'openfedllm': "
        "the OpenFedLLM/FedVLMBench code (unweighted mean, second moment from m², m = Δ at first).",
    )
    bias_correction: bool = Field(
        False, description="Adam-style bias correction of m (and v for Adam/Yogi); not in the paper."
    )

    @field_validator("bias_correction")
    @classmethod
    def _not_with_openfedllm(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("variant") == "openfedllm":
            # A custom error type keeps pydantic's "Value error, " prefix out of the message.
            raise PydanticCustomError("variant_conflict", "the openfedllm variant has no bias correction")
        return value


class FedOptParams(FedAdagradParams):
    eta: float = Field(
        1e-2,
        gt=0,
        le=10,
        description="Server learning rate eta: once |Δ| >> tau each coordinate moves about eta a round, so set it "
        "near a client's movement per round (~ train.lr x local steps; Reddi et al. tune it per task, Flower uses "
        "0.1 for FedAdam, 0.01 for FedYogi). 0.01 suits LoRA at lr ~1e-4 over ~100 steps; the tiny quickstart "
        "(lr 5e-3, ~25 steps) wants 0.03-0.1, and 3x the movement diverges (bench/algorithms.py --sweep eta=...).",
    )
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay beta2.")


class FedOpt(Strategy):
    """Shared server loop of FedAdagrad/FedAdam/FedYogi; subclasses set ``name`` and ``rule``."""

    rule: ClassVar[Rule]
    Params = FedOptParams

    def __init__(self, params=None, num_clients: int = 1):
        super().__init__(params, num_clients)
        self.m: State = {}
        self.v: State = {}
        self.steps: State = {}  # per key, float32 tensor of shape (1,)

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        if not updates:
            return dict(global_state)
        p = self.params
        delta = mean_delta(global_state, updates, weighted=p.variant == "paper")
        for what, state in (("m", self.m), ("v", self.v)):
            check_known_shapes(global_state, state, f"{self.name} server state {what}")
        new_state: State = {}
        for key, value in global_state.items():
            step = int(self.steps[key].item()) + 1 if key in self.steps else 1
            x, self.m[key], self.v[key] = fedopt_step(
                value,
                delta[key],
                self.m.get(key),
                self.v.get(key),
                step,
                rule=self.rule,
                variant=p.variant,
                eta=p.eta,
                beta1=p.beta1,
                beta2=getattr(p, "beta2", None),
                tau=p.tau,
                bias_correction=p.bias_correction,
            )
            self.steps[key] = torch.tensor([float(step)])
            new_state[key] = x.to(value.dtype)
        return new_state

    def state_dict(self) -> State:
        out: State = {}
        for prefix, state in zip(PREFIXES, (self.m, self.v, self.steps)):
            out.update({prefix + k: t.clone() for k, t in state.items()})
        return out

    def load_state_dict(self, state, reference=None):
        parts = split_prefixed(state, PREFIXES, self.name)
        if reference is not None:
            for prefix in PREFIXES:  # step/<key> is a count, not a tensor of the key's shape
                check_per_key_state(
                    reference, parts[prefix], f"{self.name} server state {prefix}", shapes=prefix != "step/"
                )
        m, v, steps = (parts[p] for p in PREFIXES)
        if not (set(m) == set(v) == set(steps)):
            raise ValueError(f"{self.name}: server state m/, v/ and step/ must cover the same keys")
        for key in m:
            if m[key].shape != v[key].shape or steps[key].numel() != 1:
                raise ValueError(f"{self.name}: inconsistent server state for {key!r}")
        self.m, self.v, self.steps = m, v, steps


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    rule = "adagrad"
    Params = FedAdagradParams


class FedAdam(FedOpt):
    name = "fedadam"
    rule = "adam"


class FedYogi(FedOpt):
    name = "fedyogi"
    rule = "yogi"
