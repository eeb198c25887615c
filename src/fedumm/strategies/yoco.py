"""YOCO: Xu et al. 2025, "You Only Communicate Once: One-shot Federated Low-Rank Adaptation of
MLLM" (NeurIPS; code: github.com/1xbq1/FedMLLM, branch ``yoco``, folder ``YOCO/``).

One upload per client. Local training adds directional supervision from the *initial* (not an
aggregated) model, so clients that never talk still push their LoRA B factors the same way, and
keeps LoRA A sparse for client-specific adaptation; the server merges the uploads through the
principal (SVD) subspace of the clients' LoRA updates.

Client (every LoRA layer with frozen weight W_0 ∈ R^{d_out × d_in}, factors B ∈ R^{d_out × r},
A ∈ R^{r × d_in}, update s·B A):

    W_0 = U S V^T,   B_0 = U_r S_r^{1/2},   R_B = sign(B_0)                 the sign target
    α_t = α_max − ½ (α_max − α_min) (1 + cos(π t / T))                     t = step, T = local steps
    L_sign   = Σ_layers ‖tanh(α_t B) − R_B‖_F / (‖R_B‖_F + 10^-6)          soft-sign regulariser on B
    L_sparse = Σ_layers mean_e |A_e|                                        L1 sparsity on A
    L = L_task + λ_sign L_sign + λ_sparse L_sparse

Server (K uploads, weights p_k = n_k / Σ n_j, rank r):

    ΔW̄ = Σ_k p_k B_k A_k = Ū Σ̄ V̄^T                                        mean update, its SVD
    B = Ū_r Σ̄_r^{1/2},   A = Σ̄_r^{1/2} V̄_r^T                              principal rank-r part

so the global adapter carries the best rank-r approximation of the mean client update
(Eckart–Young) instead of mean(B)·mean(A). Tensors that are not LoRA factors take the p_k mean.

Choices (the released code does not fix them all, and the paper's PCA step is not in it):
- R_B comes from each layer's own frozen weight (the code takes one layer's, its q_proj of LLM
  layer 27, for every B); the base model is the same on every client, so R_B costs no traffic.
  Singular vectors are sign-fixed (largest-|·| entry of each u_j positive) so every platform
  gets the same R_B; columns beyond min(d_out, d_in) have target 0.
- B keeps peft's zero initialisation, so the initial global model is the base model as for every
  other strategy; the code also initialises B to B_0 (the direction then enters through L_sign
  only).
- α anneals with the code's cosine schedule (α_min = 1 → α_max = 200 over the local steps); the
  sign term has weight λ_sign (the code: 1).
- The A regulariser is the paper's L1 sparsity, as a mean so its weight does not depend on the
  layer size; the released code instead penalises λ_t ‖A^T A − I‖_F^2 (orthogonality), which is not
  implemented here.
- The server merge is the truncated SVD of the sample-weighted mean product (the abstract's
  "PCA-based aggregation": the principal components of the clients' updates), re-split
  symmetrically; singular vectors sign-fixed as above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field, ValidationInfo, field_validator

from fedumm.strategies.base import (
    ClientAlgorithm,
    ClientUpdate,
    LocalContext,
    State,
    Strategy,
    StrategyParams,
    check_updates,
    lora_pairs,
    sample_weights,
    weighted_average,
)
from fedumm.types import LocalHooks

#: Keeps the sign term finite for an all-zero target.
SIGN_EPS = 1e-6


def fix_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each singular pair (u_j, v_j) so the largest-magnitude entry of u_j is positive
    (u: columns are left vectors; v: rows are right vectors); u_j v_j^T is unchanged."""
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs, v * signs[:, None]


def principal_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) = (U_r S_r^{1/2}, S_r^{1/2} V_r^T) of ``matrix`` (float64), zero-padded beyond its rank."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    u, vh = fix_signs(u, vh)
    k = min(rank, s.shape[0])
    root = s[:k].sqrt()
    b = torch.zeros(matrix.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, matrix.shape[1], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    return b, a


def sign_target(base_weight: torch.Tensor, rank: int) -> torch.Tensor:
    """R_B = sign(U_r S_r^{1/2}) of the frozen weight (d_out × rank, float32)."""
    b0, _ = principal_factors(base_weight, rank)
    return torch.sign(b0).float()


def alpha_at(step: int, total: int, alpha_min: float, alpha_max: float) -> float:
    """α_t = α_max − ½ (α_max − α_min)(1 + cos(π t / T)): α_min at t = 0, α_max at t = T."""
    return alpha_max - 0.5 * (alpha_max - alpha_min) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def sign_loss(b: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """‖tanh(α B) − R_B‖_F / (‖R_B‖_F + 1e-6)."""
    return torch.linalg.norm(torch.tanh(alpha * b) - target) / (torch.linalg.norm(target) + SIGN_EPS)


def sparsity_loss(a: torch.Tensor) -> torch.Tensor:
    """mean_e |A_e| (L1 per element)."""
    return a.abs().mean()


def merge_lora(
    a_factors: Sequence[torch.Tensor], b_factors: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of rank r = B_k's columns carrying the principal part of Σ_k p_k B_k A_k (p: normalised weights)."""
    total = float(sum(weights))
    mean = sum((w / total) * (b.double() @ a.double()) for a, b, w in zip(a_factors, b_factors, weights))
    b, a = principal_factors(mean, b_factors[0].shape[1])
    return a, b


class YOCOHooks(LocalHooks):
    """λ_sign L_sign(B) + λ_sparse L_sparse(A) with α_t following the optimizer steps taken."""

    def __init__(self, targets: State, a_keys: Sequence[str], total_steps: int, params: YOCOParams):
        self.targets = targets  # B key -> R_B
        self.a_keys = list(a_keys)
        self.total_steps = total_steps
        self.params = params
        self.step = 0
        self._on_device = False

    def extra_loss(self, params):
        if not self._on_device:  # move the targets to the parameters' device once
            self.targets = {k: t.to(params[k].device, params[k].dtype) for k, t in self.targets.items()}
            self._on_device = True
        p = self.params
        alpha = alpha_at(self.step, self.total_steps, p.alpha_min, p.alpha_max)
        total = None
        if p.sign_weight:
            for key, target in self.targets.items():
                term = p.sign_weight * sign_loss(params[key], target, alpha)
                total = term if total is None else total + term
        if p.sparsity_weight:
            for key in self.a_keys:
                term = p.sparsity_weight * sparsity_loss(params[key])
                total = term if total is None else total + term
        return total

    def after_step(self, params, lr):
        self.step += 1


class YOCOClient(ClientAlgorithm):
    needs_base_weights = True

    def __init__(self, params: YOCOParams):
        self.params = params

    def local_hooks(self, global_state, server_extras, client_state, context: LocalContext):
        pairs = lora_pairs(list(global_state))
        targets = {
            b_key: sign_target(context.base_weights[b_key], global_state[b_key].shape[1]) for _, b_key in pairs.values()
        }
        return YOCOHooks(targets, [a for a, _ in pairs.values()], context.total_steps, self.params)


class YOCOParams(StrategyParams):
    sign_weight: float = Field(1.0, ge=0, description="λ_sign: weight of the soft-sign regulariser on LoRA B.")
    sparsity_weight: float = Field(0.01, ge=0, description="λ_sparse: weight of the L1 (mean |A|) term on LoRA A.")
    alpha_min: float = Field(1.0, gt=0, description="Soft-sign sharpness α at the first local step.")
    alpha_max: float = Field(
        200.0, gt=0, validate_default=True, description="Soft-sign sharpness α at the last local step."
    )

    @field_validator("alpha_max")
    @classmethod
    def _check_alpha(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("alpha_min")
        if low is not None and low > value:
            raise ValueError(f"must not be below alpha_min ({low})")
        return value


class YOCO(Strategy):
    name = "yoco"
    Params = YOCOParams
    modes = ("one_shot",)
    needs_individual_updates = "YOCO merges the clients' LoRA products B_k A_k, not their mean"

    def client_algorithm(self) -> ClientAlgorithm:
        return YOCOClient(self.params)

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        states = check_updates(global_state, updates)
        weights = sample_weights(updates)
        out = weighted_average(states, weights, like=global_state)  # the non-LoRA tensors
        for a_key, b_key in lora_pairs(list(global_state)).values():
            a, b = merge_lora([s[a_key] for s in states], [s[b_key] for s in states], weights)
            out[a_key] = a.to(global_state[a_key].dtype)
            out[b_key] = b.to(global_state[b_key].dtype)
        return out
