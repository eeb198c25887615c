"""Typed run configuration: YAML file + ``--set key.sub=value`` overrides, validated up front.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key fails with its
dotted path before any model or dataset loads. ``load_config`` is the single entry point.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from fedumm.config_base import Section
from fedumm.data.config import DataConfig
from fedumm.errors import ConfigError
from fedumm.metrics import MULTITASK, TASKS, Evaluation, MetricOptions, build_evaluation, normalize_answer


class ComposeConfig(Section):
    """A LLaVA-architecture model built from a vision encoder and a causal language model."""

    vision: str = Field(
        description="CLIP or SigLIP checkpoint (folder or hub id; a full CLIP/SigLIP model or its vision "
        "model), or a built-in tiny part (tiny-clip-vision)."
    )
    language: str = Field(
        description="Causal language model checkpoint (folder or hub id), or a built-in tiny part (tiny-llama)."
    )
    connector: Literal["linear", "mlp2x_gelu"] = Field(
        "mlp2x_gelu",
        description="New connector: mlp2x_gelu (LLaVA-1.5's two layers with GELU) or linear (one affine map).",
    )
    seed: int | None = Field(None, description="Seed of the connector's initialisation; null = the run seed.")


class ModelConfig(Section):
    backend: str = Field("hf_vlm", description="Model backend name from the backend registry.")
    name_or_path: str | None = Field(
        None,
        description="Hub id, local checkpoint folder, or a built-in tiny model (fedumm.models.tiny.TINY_MODELS, "
        "e.g. tiny-llava, tiny-qwen2-vl, tiny-idefics3, tiny-paligemma, tiny-janus, tiny-minicpm-v, "
        "tiny-blip-vqa); null = the backend's own tiny model (or model.compose).",
    )
    compose: ComposeConfig | None = Field(
        None,
        description="hf_vlm: build a LLaVA-architecture model from a vision encoder and a language model with "
        "a new connector (FedVLMBench's encoder-based VLM), cached as an ordinary LLaVA checkpoint; exclusive "
        "with model.name_or_path.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the checkpoint (model types transformers does not implement, "
        "e.g. MiniCPM-V 2.6's minicpmv); off by default.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the frozen base weights are loaded in."
    )
    family: str | None = Field(
        None,
        description="hf_vlm: the family table entry (a model_type such as llava, qwen2_vl, idefics3) "
        "for a checkpoint whose model_type is not in the table; null = the checkpoint's model_type.",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    max_new_tokens: int = Field(8, ge=1, le=512, description="Answer length limit at evaluation.")
    gradient_checkpointing: bool = Field(
        False,
        description="Trade compute for activation memory: non-reentrant activation checkpointing on every layer "
        "that supports it (LoRA layers inside still get gradients: the embedding output requires grad).",
    )
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="Attention kernel: sdpa (torch's scaled_dot_product_attention: flash / memory-efficient kernels "
        "on CUDA), eager, or auto (transformers' choice: sdpa where the family supports it, else eager).",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model's forward (training and scoring; generation stays eager); the first "
        "steps pay the compilation.",
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="Load the frozen base in 4-/8-bit (QLoRA, bitsandbytes; CUDA only)."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _check_compose(self) -> ModelConfig:
        if self.compose is not None and self.backend != "hf_vlm":
            raise ValueError(f"model.compose: builds a LLaVA model for backend hf_vlm, not {self.backend!r}")
        if self.compose is not None and self.name_or_path is not None:
            raise ValueError(
                "model.compose and model.name_or_path are exclusive: compose builds the model from its parts; "
                "set model.name_or_path=null (or load a saved composed checkpoint by path without compose)"
            )
        return self


class RankTier(Section):
    rank: int = Field(description="LoRA rank of the clients in this tier (1 .. adapter.r).")
    clients: list[int] = Field(min_length=1, description="Client ids (0 .. federation.num_clients - 1).")


class AdapterConfig(Section):
    preset: str | None = Field(
        None,
        description="Backend LoRA preset: hf_vlm/janus attention, attention_qkvo, all_linear (MiniCPM-V also "
        "fedmllm: the last attention layer's q_proj, as FedMLLM); blip_vqa qv_self (FedUMM's 1,179,648 at r=16 "
        "on blip-vqa-base), qkv; null = attention.",
    )
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | None = Field(
        None,
        description="Regex over module names to wrap with LoRA; overrides adapter.preset. "
        "null = the preset's language-side targets.",
    )
    client_ranks: list[int] | list[RankTier] | None = Field(
        None,
        description="Heterogeneous LoRA ranks: one rank per client (a list of federation.num_clients ints), or "
        "tiers [{rank: r, clients: [ids]}] covering every client once. Each rank is at most adapter.r, the "
        "host's and the global adapter's rank; a client of rank r_k trains the first r_k LoRA components "
        "(scale alpha / adapter.r for all). Needs a rank-aware strategy (hetlora, flexlora, flora) unless "
        "every rank equals adapter.r. null = every client at adapter.r.",
    )
    freeze_a: bool = Field(
        False,
        description="FFA-LoRA (Sun et al. 2024): LoRA A stays at its seeded initialisation, only B trains and "
        "travels, so FedAvg of B is the exact average of the products B_k A.",
    )
    per_task: bool = Field(
        False,
        description="Per-task adapters (FedUMM's per-modality adapters): two LoRA adapters of the same layout on the "
        "one frozen base, 'understanding' (every task but t2i) and 'generation' (t2i); each batch holds one task "
        "and runs through its task's adapter. Both travel (keys ...lora_A.<adapter>.weight) with the rows each "
        "trained this round; the server averages each adapter over the clients that trained it, weighted by "
        "those rows only, and an adapter nobody trained keeps its value. Needs finetune.strategy=lora and a "
        "strategy with per-key weights (fedavg, fedprox).",
    )

    @model_validator(mode="after")
    def _check_client_ranks(self) -> AdapterConfig:
        ranks = self.client_ranks or []
        tiers = [(t.rank, f"tier rank {t.rank}") for t in ranks if isinstance(t, RankTier)]
        plain = [(r, f"client {i}'s rank {r}") for i, r in enumerate(ranks) if isinstance(r, int)]
        for rank, what in tiers + plain:
            if rank < 1:
                raise ValueError(f"adapter.client_ranks: {what} is below 1")
            if rank > self.r:
                raise ValueError(f"adapter.client_ranks: {what} exceeds adapter.r ({self.r}), the host's rank")
        return self

    def rank_table(self, num_clients: int) -> dict[int, int] | None:
        """Client id -> LoRA rank from ``client_ranks`` (None when unset); a list of the wrong
        length or tiers that miss or repeat a client are a ValueError naming the key."""
        if self.client_ranks is None:
            return None
        if all(isinstance(r, int) for r in self.client_ranks):
            if len(self.client_ranks) != num_clients:
                raise ValueError(
                    f"adapter.client_ranks: {len(self.client_ranks)} ranks for federation.num_clients={num_clients}"
                )
            return dict(enumerate(self.client_ranks))
        table: dict[int, int] = {}
        for tier in self.client_ranks:
            for cid in tier.clients:
                if not 0 <= cid < num_clients:
                    raise ValueError(
                        f"adapter.client_ranks: client {cid} of tier rank {tier.rank} is not a client id "
                        f"(0 .. {num_clients - 1})"
                    )
                if cid in table:
                    raise ValueError(f"adapter.client_ranks: client {cid} is in two tiers")
                table[cid] = tier.rank
        missing = sorted(set(range(num_clients)) - set(table))
        if missing:
            raise ValueError(f"adapter.client_ranks: clients {missing} are in no tier")
        return table


class FinetuneConfig(Section):
    strategy: Literal["lora", "connector", "lora+connector", "two_stage", "custom"] = Field(
        "lora",
        description="FedVLMBench strategy: lora (F-L), connector (F-C), lora+connector (F-CL), "
        "two_stage (F-2stage: connector first, then LoRA), or custom (finetune.groups).",
    )
    two_stage_rounds: int = Field(1, ge=1, description="two_stage: rounds that train the connector.")
    groups: dict[str, Literal["frozen", "share", "local"]] = Field(
        default_factory=dict,
        description="custom: mode per unit (frozen | share = train and send | local = train and "
        "keep on the client); units: lora and the backend's module groups (vision, connector, language, and "
        "its own, e.g. janus gen_embed, gen_aligner, gen_head); unlisted units are frozen.",
    )

    @model_validator(mode="after")
    def _check_groups(self) -> FinetuneConfig:
        if self.strategy != "custom" and self.groups:
            raise ValueError("finetune.groups: only used with finetune.strategy=custom")
        if self.strategy == "custom" and all(m == "frozen" for m in self.groups.values()):
            raise ValueError("finetune.groups: custom strategy needs at least one unit not frozen")
        if self.groups.get("language", "frozen") != "frozen" and self.groups.get("lora", "frozen") != "frozen":
            raise ValueError("finetune.groups: train either lora or the full language model, not both")
        return self


class StrategyConfig(Section):
    """``name`` plus that strategy's own hyperparameters (see fedumm.strategies)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field("fedavg", description="Server aggregation strategy (fedumm.strategies.STRATEGIES).")

    def params(self) -> dict[str, Any]:
        """The strategy's own keys; checked against its ``Params`` by ``fedumm.validation``."""
        return dict(self.model_extra or {})


class ValidationConfig(Section):
    """Checks every client reply passes before any strategy sees it (``federation.replies``)."""

    max_update_norm: float | Literal["auto"] | None = Field(
        None,
        description="Reject a reply whose update (trained state minus the global state, all tensors together) has "
        "an L2 norm above this; auto = auto_norm_factor x the round's median update norm; null = no bound.",
    )
    auto_norm_factor: float = Field(3.0, gt=1, description="k of max_update_norm=auto.")
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Largest sample count a reply may claim; null = the client's own row count as its setup "
        "reported it (train + local test).",
    )


class SecureAggregationConfig(Section):
    """Secure aggregation (Bonawitz et al. 2017; ``fedumm.privacy.secagg``): the server learns only
    the sum of the clients' fixed-point encoded updates."""

    threshold: int = Field(
        ...,
        ge=2,
        description="t: the fewest clients whose shares recover a dropped client's masks; the round fails when "
        "fewer than t clients are left at the unmasking step. At most the round's sampled clients.",
    )
    clipping_range: float = Field(
        8.0, gt=0, description="Each coordinate of a client's update is clamped to [-R, R] before encoding."
    )
    quantization_bits: int = Field(
        24, ge=8, le=40, description="Fixed-point bits per coordinate: step = 2R / (2^bits - 1)."
    )


class PrivacyConfig(Section):
    """Differential privacy and secure aggregation (README: Privacy, threat model).

    ``level: client`` is DP-FedAvg (McMahan et al. 2018): each client's update is clipped to
    ``clip_norm`` and Gaussian noise of std ``noise_multiplier x clip_norm`` is added to the sum,
    which is divided by the expected number of participants; under it ``federation.fraction_fit`` is
    the Poisson sampling rate q of each client in each round. ``level: sample`` is DP-SGD inside each
    client (Opacus): ``clip_norm`` and the noise multiplier apply per training row."""

    level: Literal["none", "client", "sample"] = Field(
        "none", description="Unit of privacy: none, client (DP-FedAvg) or sample (DP-SGD in local training)."
    )
    mechanism: Literal["central", "local"] = Field(
        "central",
        description="client level: central = the server (or, with secure aggregation, the clients in shares) adds "
        "the noise once to the sum; local = each client noises its own update before it leaves the site.",
    )
    clip_norm: float | Literal["adaptive"] = Field(
        1.0,
        description="L2 bound C (client level: of the whole update; sample level: of each row's gradient); "
        "adaptive (client level) = C follows privacy.target_quantile of the update norms (Andrew et al. 2021).",
    )
    initial_clip_norm: float = Field(0.1, gt=0, description="clip_norm=adaptive: C in round 1.")
    target_quantile: float = Field(
        0.5, gt=0, lt=1, description="clip_norm=adaptive: the share of updates C should leave unclipped."
    )
    clip_learning_rate: float = Field(0.2, gt=0, description="clip_norm=adaptive: eta_C of C <- C exp(-eta_C (b - q)).")
    clipped_count_stddev: float | None = Field(
        None,
        gt=0,
        description="clip_norm=adaptive: std of the noise on the count of unclipped updates; null = expected "
        "participants / 20 (the paper's choice).",
    )
    noise_multiplier: float | None = Field(
        None, ge=0, description="z: noise std / C. Give this or target_epsilon (0 = clipping only, epsilon infinite)."
    )
    target_epsilon: float | None = Field(
        None, gt=0, description="Pick z so that epsilon after federation.rounds rounds is this (at privacy.delta)."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of the (epsilon, delta) guarantee.")
    max_epsilon: float | None = Field(
        None, gt=0, description="Stop the run before a round would take epsilon above this."
    )
    accountant: Literal["rdp", "pld"] = Field(
        "rdp", description="dp-accounting's Renyi-DP or privacy-loss-distribution accountant (client level)."
    )
    seeded_noise: bool = Field(
        False,
        description="Draw the DP noise from the run seed (reproducible runs, e.g. in-process vs FLARE; whoever knows "
        "the seed can remove the noise, so research only); false = from the operating system's entropy.",
    )
    secure_aggregation: SecureAggregationConfig | None = Field(
        None, description="{threshold: t, ...}: the server sees only the sum of the updates (null = off)."
    )

    @property
    def dp(self) -> bool:
        return self.level != "none"

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyConfig:
        if not self.dp:
            return self
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError(f"privacy.level={self.level}: give privacy.noise_multiplier or privacy.target_epsilon")
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("privacy: give privacy.noise_multiplier or privacy.target_epsilon, not both")
        if isinstance(self.clip_norm, float) and self.clip_norm <= 0:
            raise ValueError(f"privacy.clip_norm: must be positive or adaptive, got {self.clip_norm}")
        if self.clip_norm == "adaptive" and self.level == "sample":
            raise ValueError("privacy.clip_norm=adaptive: client level only; give a number for level=sample")
        if self.max_epsilon is not None and self.target_epsilon is not None and self.target_epsilon > self.max_epsilon:
            raise ValueError(
                f"privacy.target_epsilon ({self.target_epsilon}) exceeds privacy.max_epsilon ({self.max_epsilon})"
            )
        return self


class FaultsConfig(Section):
    """Simulated faults (in-process engine), drawn per client and round from the run seed."""

    dropout: float = Field(0.0, ge=0, lt=1, description="Probability that a sampled client sends no reply.")
    straggler_rate: float = Field(0.0, ge=0, le=1, description="Probability that a sampled client is slow.")
    straggler_delay: float = Field(
        60.0, gt=0, description="Seconds a slow client's reply is late (simulated, not slept)."
    )


class AttackConfig(Section):
    """Simulated malicious clients (in-process engine), for robustness research and tests."""

    kind: Literal["none", "nan", "scale", "sign_flip", "gaussian", "label_flip", "inflate_samples"] = Field(
        "none",
        description="nan = a NaN in every tensor; scale = update x factor; sign_flip = update x -1; gaussian = "
        "update + N(0, std^2); label_flip = the attackers train on permuted answers; inflate_samples = claim "
        "samples rows.",
    )
    clients: list[int] = Field(default_factory=list, description="Client ids that attack.")
    from_round: int = Field(1, ge=1, description="First round the attack runs in.")
    factor: float = Field(1e6, description="scale: the update's factor.")
    std: float = Field(1.0, gt=0, description="gaussian: the noise's standard deviation.")
    samples: int = Field(1_000_000_000, ge=1, description="inflate_samples: the sample count claimed.")


class CompressionConfig(Section):
    """Compressed client updates (``fedumm.compression``): clients send their delta
    theta_k - theta through a codec, the server decodes it before its checks and the strategy."""

    codec: Literal["none", "int8", "int4", "topk"] = Field(
        "none",
        description="none = the trained tensors as today (at federation.wire_dtype); int8 / int4 = per-row scaled "
        "codes with stochastic rounding; topk = the topk_fraction largest-magnitude entries of each tensor.",
    )
    topk_fraction: float = Field(
        0.1, gt=0, le=1, description="codec=topk: the share k of each tensor's entries sent (at least one)."
    )
    error_feedback: bool = Field(
        False,
        description="Each client adds what compression dropped (its residual, kept across rounds and checkpointed) "
        "to its next delta (Seide et al. 2014; Karimireddy et al. 2019).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CompressionConfig:
        if self.codec == "none" and self.error_feedback:
            raise ValueError(
                "federation.compression.error_feedback: needs a codec (federation.compression.codec is none)"
            )
        # Compared with the default, not model_fields_set: a saved config.yaml lists every key.
        if self.topk_fraction != type(self).model_fields["topk_fraction"].default and self.codec != "topk":
            raise ValueError(f"federation.compression.topk_fraction: only used with codec topk (codec is {self.codec})")
        return self


class FederationConfig(Section):
    mode: Literal["rounds", "one_shot"] = Field(
        "rounds",
        description="rounds: federation.rounds rounds of sample, train, aggregate; one_shot: every client trains once "
        "(its whole budget is train.local_epochs / train.local_steps), uploads once, and the server combines the "
        "uploads (one round: federation.rounds=1, fraction_fit=1; a one-shot combiner such as yoco, or fedavg) and "
        "also scores the clients' prediction ensemble and each client's own model on the global test.",
    )
    num_clients: int = Field(4, ge=1, le=10_000, description="Clients the data is split across.")
    rounds: int = Field(12, ge=1, description="Federated rounds (each: sample, train locally, aggregate, evaluate).")
    fraction_fit: float = Field(1.0, gt=0, le=1, description="Share of clients sampled per round.")
    min_fit_clients: int = Field(
        1,
        ge=1,
        description="Lower bound on clients sampled per round, and the valid replies a round needs to aggregate "
        "(fewer: the global model and server state stay as they were).",
    )
    max_failed_rounds: int = Field(
        3, ge=1, description="Rounds in a row without enough valid replies before the run ends with an error."
    )
    round_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds a round waits for its replies; late ones are dropped (nvflare: null = "
        "engine.task_timeout; simulated stragglers: null = never late).",
    )
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    wire_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="dtype tensors travel in (float16/bfloat16 halve the bytes; the server "
        "aggregates and keeps its state in float32).",
    )
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    resume_from: str | None = Field(
        None,
        min_length=1,
        description="Continue a run from its checkpoint: a run folder (its checkpoints/last.safetensors) or a "
        "checkpoint .safetensors file. The global adapter, the strategy's server state and the clients' "
        "algorithm state are restored and rounds continue from the checkpoint's round + 1 to "
        "federation.rounds; with output.dir/output.name naming that run folder (fedumm run --resume) it is "
        "continued in place, else a new run folder starts with the earlier rounds' records.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_round_by_default(cls, data: Any) -> Any:
        """one_shot without a rounds key runs its one round (rounds' default is for mode rounds)."""
        if isinstance(data, dict) and data.get("mode") == "one_shot" and "rounds" not in data:
            return {**data, "rounds": 1}
        return data

    @model_validator(mode="after")
    def _check_one_shot(self) -> FederationConfig:
        if self.mode != "one_shot":
            return self
        if self.rounds != 1:
            raise ValueError(
                f"federation.rounds: mode one_shot trains and uploads once: set federation.rounds=1 "
                f"(got {self.rounds}); the local budget is train.local_epochs / train.local_steps"
            )
        if self.clients_per_round() != self.num_clients:
            raise ValueError(
                "federation.fraction_fit: mode one_shot trains every client once: set federation.fraction_fit=1 "
                f"(got {self.fraction_fit}: {self.clients_per_round()} of {self.num_clients} clients)"
            )
        return self

    def clients_per_round(self) -> int:
        """ceil(fraction_fit * num_clients), at least min_fit_clients, at most num_clients."""
        return min(self.num_clients, max(self.min_fit_clients, math.ceil(self.fraction_fit * self.num_clients)))


class TrainConfig(Section):
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="Local optimizer: adamw (FedUMM's) or sgd (plain or heavy-ball with train.momentum; the "
        "optimizer FedAvg, FedProx and SCAFFOLD are analysed with).",
    )
    lr: float = Field(
        5e-3,
        gt=0,
        le=10,
        description="Local learning rate (AdamW: 5e-3 suits the tiny default, real VLMs want ~1e-4; SGD needs "
        "a larger one).",
    )
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd: heavy-ball momentum (0 = plain SGD).")
    weight_decay: float = Field(
        0.05,
        ge=0,
        description="adamw: decoupled weight decay (FedUMM's 0.05); sgd: L2 penalty added to the gradient.",
    )
    batch_size: int = Field(16, ge=1, description="Rows per local micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    local_epochs: int = Field(1, ge=1, description="Passes over local data per round.")
    local_steps: int | None = Field(
        None, ge=1, description="If set, optimizer steps per round instead of local_epochs."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null = off.")
    preprocess_cache_mb: int = Field(
        512,
        ge=0,
        description="Each training row's processor output (pixels, prompt and answer tokens) is kept for the run "
        "in a least-recently-used cache of at most this many MiB, so images and prompts are preprocessed once "
        "rather than every epoch; 0 = off (text-to-image backends, whose batches draw prompt dropout, never cache).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision for training (bf16/fp16 only on CUDA)."
    )
    cfg_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Text-to-image rows: probability that a row's prompt is replaced by the unconditional prompt "
        "(classifier-free guidance training, Janus's 0.1); seeded per local run.",
    )

    task_loss_weights: dict[str, float] | None = Field(
        None,
        description="Per-task loss weights, e.g. {vqa: 1.0, t2i: 0.5}: a batch's loss (every batch holds one "
        "task) is multiplied by its task's weight (> 0); tasks left out weigh 1; keys are tasks of "
        "fedumm.metrics.TASKS (a row's task: its task column, else eval.default_task, else eval.task; vqa "
        "under multitask). null = 1 for every task.",
    )

    @field_validator("task_loss_weights")
    @classmethod
    def _check_task_loss_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for task, weight in (value or {}).items():
            if task not in TASKS:
                raise ValueError(f"train.task_loss_weights: unknown task {task!r}; expected some of {', '.join(TASKS)}")
            if not weight > 0 or not math.isfinite(weight):
                raise ValueError(f"train.task_loss_weights.{task}: must be a finite number > 0, got {weight}")
        return value

    def loss_weight(self, task: str) -> float:
        """The loss weight of a batch of ``task`` (``task_loss_weights``; 1 when unlisted)."""
        return float((self.task_loss_weights or {}).get(task, 1.0))

    @model_validator(mode="after")
    def _check_optimizer(self) -> TrainConfig:
        if self.optimizer != "sgd" and self.momentum:
            raise ValueError("train.momentum: only used with train.optimizer=sgd")
        return self


class EvalConfig(Section):
    task: str = Field(
        "vqa",
        description="A task of the registry (fedumm.metrics.TASKS): vqa (VQA v2 accuracy, exact match), "
        "classification (accuracy, macro-F1, ROC-AUC), caption (CIDEr-D, BLEU-4, ROUGE-L), grounding (accuracy at "
        "IoU >= 0.5, mean IoU), t2i (GenEval score: the mean over its categories of the share of correct images, "
        "fedumm.metrics.geneval); the first named is the primary metric. 'multitask': each row is scored by its own "
        "'task' column; the primary metric is multitask_score, the weighted mean of the tasks' primary metrics.",
    )
    task_weights: dict[str, float] | None = Field(
        None,
        description="multitask: {task: weight > 0}, the tasks rows may name and their weights in multitask_score; "
        "null = every registered task, weight 1. Unbounded metrics (CIDEr-D) enter the mean as they are.",
    )
    default_task: str | None = Field(
        None,
        description="The task of rows without a 'task' column; null = eval.task (multitask: such a row is an error).",
    )
    box_format: Literal["normalized", "pixel"] = Field(
        "normalized",
        description="grounding: boxes [x1, y1, x2, y2] in the answer text are fractions of the image size "
        "(normalized) or pixels of the row's image (pixel).",
    )
    positive_label: str = Field("yes", description="classification: the positive class (ROC-AUC).")
    cfg_scale: float = Field(
        5.0,
        ge=1,
        description="Text-to-image sampling: classifier-free guidance scale s, logits = uncond + s (cond - uncond) "
        "(1 = conditional only; Janus's default 5).",
    )
    image_temperature: float = Field(
        1.0, ge=0, description="Text-to-image sampling temperature over image tokens (0 = greedy)."
    )
    mode: Literal["generate", "score"] = Field(
        "generate",
        description="How a text task answers: generate (batched greedy decoding with the KV cache, at most "
        "model.max_new_tokens tokens) or score (closed-vocabulary tasks: classification, yes/no: each row's answer "
        "is the eval.choices entry of highest teacher-forced log-likelihood; one forward pass per choice, no "
        "decoding).",
    )
    choices: list[str] | None = Field(
        None,
        description="eval.mode score: the closed vocabulary every row is scored against (at least two answers, "
        "e.g. [yes, no]); required there.",
    )
    batch_size: int = Field(32, ge=1, description="Rows per evaluation batch.")
    every: int = Field(
        1,
        ge=1,
        description="Evaluate the global model every N rounds and always after the last one (and round 0); "
        'the records of the rounds in between say "evaluated": false and carry no global metrics.',
    )
    max_samples: int | None = Field(None, ge=1, description="Cap on global test samples.")
    clients: bool = Field(True, description="Evaluate each client's local model on its test split.")
    centralized_baseline: bool = Field(
        True, description="After the federated job, train the centralized baseline (same budget)."
    )
    clip_model: str | None = Field(
        None,
        description="t2i: a CLIP checkpoint (a folder saved with save_pretrained, or a hub name) for CLIPScore of "
        "generated images against their prompts (torchmetrics; needs the generation extra); null = off.",
    )
    t2i_metric: Literal["geneval_overall", "image_token_accuracy", "clip_score"] = Field(
        "geneval_overall",
        description="t2i: the primary metric (reported, plotted, compared). geneval_overall: the checker's GenEval "
        "score over the test rows it can check (synthetic shapes and palette; the run is refused when none can "
        "be); image_token_accuracy: teacher-forced top-1 accuracy on the rows' target image tokens (rows with a "
        "target image); clip_score: CLIPScore against the prompt (needs eval.clip_model). Rows the checker cannot "
        "check are still generated, saved and scored by the other metrics.",
    )
    geneval_prompts: str | None = Field(
        None,
        description="GenEval's prompt file (evaluation_metadata.jsonl): after the last round the global model draws "
        "eval.geneval_samples images per prompt into <run>/geneval/official in GenEval's layout, for GenEval's own "
        "evaluator (the summary prints the command); null = off. Needs a generating backend (janus, emu3).",
    )
    geneval_samples: int = Field(
        4, ge=1, description="Images drawn per prompt of eval.geneval_prompts (GenEval draws 4)."
    )

    @field_validator("task")
    @classmethod
    def _check_task(cls, value: str) -> str:
        if value not in TASKS and value != MULTITASK:
            raise ValueError(f"must be one of {', '.join(repr(t) for t in (*TASKS, MULTITASK))}")
        return value

    @model_validator(mode="after")
    def _check_tasks(self) -> EvalConfig:
        try:
            evaluation = self.evaluation()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.mode == "score":
            open_tasks = [name for name, task in evaluation.tasks.items() if not task.scores_choices]
            if open_tasks:
                raise ValueError(
                    f"eval.mode: score needs closed-vocabulary tasks (classification), but task {open_tasks[0]!r} "
                    "has open answers; use eval.mode=generate"
                )
            if not self.choices or len({normalize_answer(c) for c in self.choices}) < 2:
                raise ValueError(
                    f"eval.choices: eval.mode score needs at least two distinct answers to score, got {self.choices}"
                )
        if self.t2i_metric != "geneval_overall" and "t2i" not in self.evaluation().tasks:
            raise ValueError(f"eval.t2i_metric: {self.t2i_metric} is for text-to-image runs; eval.task scores no t2i")
        if self.t2i_metric == "clip_score" and self.clip_model is None:
            raise ValueError("eval.t2i_metric: clip_score needs eval.clip_model (a CLIP checkpoint)")
        if self.geneval_samples != 4 and self.geneval_prompts is None:
            raise ValueError("eval.geneval_samples: only with eval.geneval_prompts (the prompts to draw)")
        return self

    def evaluation(self) -> Evaluation:
        """The run's ``fedumm.metrics.Evaluation`` (its tasks, weights, default task, metric options)."""
        options = MetricOptions(positive_label=self.positive_label, box_format=self.box_format)
        return build_evaluation(self.task, self.task_weights, self.default_task, options, self.t2i_metric)


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders.")
    name: str | None = Field(
        None, description="Run folder name under output.dir: one path component; default: the config's name."
    )
    overwrite: bool = Field(
        False,
        description="Replace an existing run folder of the same name (only a fedumm run folder: one holding the "
        ".fedumm-run marker its run wrote; anything else is refused).",
    )
    progress: bool = Field(True, description="Show progress bars.")
    trackers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers every round is logged to: tensorboard (event files in <run>/tensorboard) "
        "and/or mlflow (MLFLOW_TRACKING_URI, else a file store in <run>/mlruns; experiment = the run name); "
        "needs the tracking extra.",
    )

    @field_validator("trackers")
    @classmethod
    def _unique_trackers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists a tracker twice: {value}")
        return value

    @staticmethod
    def folder_name_problem(name: str) -> str | None:
        """Why ``name`` cannot be a run folder's name (None: it can): it must be one path
        component, so neither a run nor output.overwrite ever reaches outside output.dir."""
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
            return "must be a single folder name under output.dir (not empty, '.' or '..'; no '/' or '\\')"
        return None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        problem = None if value is None else cls.folder_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class SiteConfig(Section):
    """One production site's own data (``engine.sites.<site>`` or the site's local file)."""

    data: DataConfig = Field(default_factory=DataConfig, description="The site's data: its rows are its clients' rows.")
    seed: int | None = Field(None, description="Seed for the site's data loading and local split; null = the run seed.")


_SITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NVFLARE_ONLY = ("workspace", "threads", "python", "client_command", "sites", "timeout", "torch_threads")


class EngineConfig(Section):
    """Where the rounds run. ``simulation``: in-process, one shared base model. ``nvflare``: the
    same ClientRuntime and Server inside NVIDIA FLARE (simulator for ``fedumm run``, job folders
    for ``fedumm export``); keys below the name apply to nvflare only."""

    name: Literal["simulation", "nvflare"] = Field("simulation", description="Execution engine.")
    parallel_clients: int = Field(
        1,
        ge=1,
        description="simulation: train up to this many of a round's sampled clients at once on the one frozen "
        "base (vectorised LoRA: the base runs once over their concatenated batches, each client's LoRA on its own "
        "rows; fedumm.federation.parallel); 1 = one after another. Rounds that cannot vectorise (a fully trained "
        "group, DP-SGD, adapter.client_ranks, fp16, a generation backend) warn once and train one after another; "
        "nvflare trains each site on its own.",
    )
    workspace: str | None = Field(
        None,
        description="nvflare: FLARE simulator workspace folder (kept); null = a temporary one, removed "
        "after a successful run.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="nvflare simulator: clients running at once; null = one per client (each keeps its "
        "process and model for the whole job; fewer threads restart a client process every round).",
    )
    python: str | None = Field(
        None,
        description="nvflare: interpreter that runs each client's trainer as an external process "
        "(e.g. another virtual environment's bin/python); null = in the FLARE client process.",
    )
    client_command: str | None = Field(
        None,
        description="nvflare: command that launches each client's trainer as an external process, e.g. "
        "'bash envs/launch_janus.sh' (FLARE appends custom/fedumm_client.py); exclusive with engine.python.",
    )
    data_placement: Literal["auto", "partition", "site"] = Field(
        "auto",
        description="nvflare: partition = every client takes its share of data.* split with the run seed "
        "(the in-process split); site = each site loads its own data (its local/fedumm_site.yaml, else "
        "engine.sites.<site>); auto = partition in the simulator, site in exported jobs.",
    )
    sites: dict[str, SiteConfig] = Field(
        default_factory=dict,
        description="nvflare: site name -> {data, seed} for data_placement=site; sites with a "
        "local/fedumm_site.yaml file use that instead.",
    )
    server_eval: bool = Field(
        True,
        description="nvflare: the server evaluates the global adapter on data.*'s test split every round "
        "(false where the server holds no data: global metrics are then empty).",
    )
    task_request_interval: float = Field(
        0.1,
        gt=0,
        le=60,
        description="nvflare: seconds a client waits before asking the server again for a task (FLARE's default is 2).",
    )
    task_check_period: float = Field(
        0.05, gt=0, le=10, description="nvflare: seconds between the controller's checks for finished tasks."
    )
    client_poll_interval: float = Field(
        0.05,
        gt=0,
        le=10,
        description="nvflare, in-process clients: seconds between the Client API's checks for a new task "
        "or a finished result (FLARE 2.9 polls every 0.5 s and has no setting; fedumm's client sets it).",
    )
    # No heartbeat key: FLARE 2.9 drops silent clients by the server startup kit's
    # local/resources.json (heart_beat_timeout), never by a job's settings.
    task_timeout: int = Field(
        14_400,
        ge=0,
        description="nvflare: seconds a round (and the setup task) waits for its clients; 0 = no limit.",
    )
    timeout: float | None = Field(
        None, gt=0, description="nvflare simulator: wall-clock limit of the whole run in seconds; null = none."
    )
    min_label_count: int = Field(
        10,
        ge=1,
        description="nvflare: a site's setup reply names a partition label or a training answer only when at "
        "least this many of its rows share it (k-anonymity); rarer ones are sent as one pooled count.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="nvflare: torch threads in each client and server process; null = the simulator splits the "
        "cores among the clients it runs at once (exported jobs: torch's default).",
    )

    @field_validator("sites")
    @classmethod
    def _check_site_names(cls, sites: dict[str, SiteConfig]) -> dict[str, SiteConfig]:
        for site in sites:
            if not re.match(_SITE_NAME, site):
                raise ValueError(f"engine.sites: {site!r} is not a valid site name (letters, digits, '.', '_', '-')")
        return sites

    @model_validator(mode="after")
    def _check_engine(self) -> EngineConfig:
        if self.name != "nvflare":
            for key in _NVFLARE_ONLY:
                if key in self.model_fields_set and getattr(self, key) not in (None, {}):
                    raise ValueError(f"engine.{key}: only used with engine.name=nvflare")
        if self.python is not None and self.client_command is not None:
            raise ValueError("engine.python and engine.client_command are exclusive: set one")
        for key in ("python", "client_command"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ValueError(f"engine.{key}: must not be empty (null = in-process clients)")
        if self.sites and self.data_placement == "partition":
            raise ValueError("engine.sites: only used with engine.data_placement=site or auto")
        return self

    def check_against(self, config: RunConfig) -> None:
        """Cross-checks with other sections (called from ``RunConfig``)."""
        if self.sites and len(self.sites) != config.federation.num_clients:
            raise ValueError(
                f"engine.sites lists {len(self.sites)} sites but federation.num_clients is "
                f"{config.federation.num_clients}"
            )


class RunConfig(Section):
    name: str = Field("quickstart", min_length=1, description="Run name.")
    seed: int = Field(42, description="Seed for data, partitions, init and training.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        """Checks across sections that need no registry (those run in ``fedumm.validation``)."""
        if self.finetune.strategy == "two_stage" and self.finetune.two_stage_rounds >= self.federation.rounds:
            raise ValueError(
                f"finetune.two_stage_rounds ({self.finetune.two_stage_rounds}) must be below "
                f"federation.rounds ({self.federation.rounds}) or the LoRA stage never runs"
            )
        self.engine.check_against(self)
        compose = self.model.compose
        if compose is not None and compose.seed is None:
            compose.seed = self.seed  # recorded with the run: every party builds the same connector
        if self.federation.min_fit_clients > self.federation.num_clients:
            raise ValueError(
                f"federation.min_fit_clients ({self.federation.min_fit_clients}) exceeds "
                f"federation.num_clients ({self.federation.num_clients})"
            )
        federation = self.federation
        outside = [c for c in federation.attack.clients if not 0 <= c < federation.num_clients]
        if outside:
            raise ValueError(
                f"federation.attack.clients: {outside} are not client ids (0 .. federation.num_clients - 1 = "
                f"{federation.num_clients - 1})"
            )
        simulated = federation.attack.kind != "none" or federation.faults != FaultsConfig()
        if simulated and self.engine.name != "simulation":
            raise ValueError(
                "federation.faults / federation.attack: simulated in the in-process engine only "
                "(engine.name=simulation)"
            )
        if federation.attack.kind != "none" and not federation.attack.clients:
            raise ValueError("federation.attack.clients: name the attacking client ids (e.g. [0])")
        self.adapter.rank_table(federation.num_clients)
        if federation.compression.codec != "none" and self.privacy.secure_aggregation is not None:
            raise ValueError(
                f"federation.compression.codec={federation.compression.codec}: not with privacy.secure_aggregation "
                "(the server decodes each client's update; secure aggregation shows it only their masked sum)"
            )
        if federation.compression.codec != "none" and self.adapter.client_ranks is not None:
            raise ValueError(
                f"federation.compression.codec={federation.compression.codec}: not with adapter.client_ranks yet "
                "(a rank-r_k reply's delta has its own shapes; the codecs encode the global adapter's)"
            )
        self._check_per_task()
        self._check_data_tasks()
        if self.federation.resume_from and self.engine.name == "nvflare":
            # The FLARE controller builds its server through Server.from_config, but its round
            # loop and run-folder copy do not continue a run yet.
            raise ValueError(
                "federation.resume_from: not supported with engine.name=nvflare yet; resume with "
                "engine.name=simulation (it reads checkpoints of FLARE runs too)"
            )
        return self

    def _check_per_task(self) -> None:
        """adapter.per_task: the combinations it cannot serve, one line naming the keys."""
        if not self.adapter.per_task:
            return
        refused = {
            "finetune.strategy": self.finetune.strategy != "lora",
            "adapter.client_ranks": self.adapter.client_ranks is not None,
            "adapter.freeze_a": self.adapter.freeze_a,
            "privacy.level": self.privacy.level != "none",
            "privacy.secure_aggregation": self.privacy.secure_aggregation is not None,
            "federation.mode=one_shot": self.federation.mode == "one_shot",
            "federation.compression.codec": self.federation.compression.codec != "none",
        }
        clashing = [key for key, clash in refused.items() if clash]
        if clashing:
            raise ValueError(
                f"adapter.per_task: not with {', '.join(clashing)} (the per-task adapters train LoRA only and are "
                "averaged per adapter over plain, one-by-one client updates)"
            )
        if self.eval.task != MULTITASK:
            raise ValueError(
                f"adapter.per_task: set eval.task={MULTITASK} (got {self.eval.task}): each task is then scored "
                "with its own adapter and metrics"
            )

    def _check_data_tasks(self) -> None:
        """data.tasks: one list per client, of tasks the run knows."""
        tasks = self.data.tasks
        if tasks is None:
            return
        if len(tasks) != self.federation.num_clients:
            raise ValueError(
                f"data.tasks: {len(tasks)} lists for federation.num_clients={self.federation.num_clients} "
                "(one list of tasks per client)"
            )
        for cid, held in enumerate(tasks):
            unknown = [t for t in held if t not in TASKS]
            if unknown:
                raise ValueError(f"data.tasks[{cid}]: unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


#: Largest config file read, and largest ``--set`` item: configs are small; anything bigger is a mistake.
MAX_CONFIG_BYTES = 1 << 20
MAX_OVERRIDE_CHARS = 64 << 10
#: Longest value (or key) an error message quotes before cutting it with "…".
MAX_SHOWN_CHARS = 200


def _clip(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class _AliasError(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark | None):
        super().__init__()
        self.line = None if mark is None else mark.line + 1


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader without anchors and aliases (``&a`` / ``*a``, ``<<: *a``): a config
    never needs them, and nested aliases expand exponentially ("billion laughs")."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasError(event.start_mark)
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)


def _parse_override(item: str) -> tuple[list[str], Any]:
    shown = repr(_clip(item))
    if len(item) > MAX_OVERRIDE_CHARS:
        raise ConfigError(
            f"--set {shown}: longer than {MAX_OVERRIDE_CHARS // 1024} KiB; put large values in a config file"
        )
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shown}: expected key.sub=value")
    # YAML parsing gives numbers, booleans, null and lists their natural types.
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except _AliasError:
        raise ConfigError(f"--set {shown}: YAML anchors and aliases (&name, *name) are not accepted") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {shown}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {_clip(item)!r}: {_clip(where)} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    """One line for every problem: ``key: message (got value)``, long keys and values cut at
    ``MAX_SHOWN_CHARS`` so a huge value never floods the terminal."""
    lines = []
    for err in exc.errors():
        key = _clip(".".join(str(p) for p in err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error":
            msg = f"must be one of {err['ctx']['expected']}"
        elif err["type"] == "finite_number":
            msg = "must be a finite number"
        msg = _clip(msg.removeprefix("Value error, "), 4 * MAX_SHOWN_CHARS)
        if msg.startswith(f"{key}.") or msg.startswith(f"{key}:"):
            key = ""  # the message names its own (more precise) key
        got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {_clip(repr(err['input']))})"
        lines.append(f"{key}: {msg}{got}" if key else f"{msg}")
    return f"invalid config {source}: " + "; ".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides. The file
    must be at most ``MAX_CONFIG_BYTES`` and use no YAML anchors or aliases."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} is {size:,} bytes, over the {MAX_CONFIG_BYTES // (1 << 20)} MiB limit of a config"
            )
        try:
            loaded = _load_yaml(path.read_text())
        except _AliasError as exc:
            raise ConfigError(
                f"config file {path}: YAML anchors and aliases (&name, *name) are not accepted (line {exc.line}); "
                "write the values out"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_clip(str(exc), 4 * MAX_SHOWN_CHARS)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
        data = loaded
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data, source)


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
