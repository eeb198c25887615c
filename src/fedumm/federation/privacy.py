"""Client-level differential privacy in the round loop (``privacy.level: client``), the same in
every engine: the server samples clients by Poisson draws, sends the clip bound, aggregates the
clipped updates into one noisy mean update that the strategy then applies (FedAvg: as is;
FedAvgM and the FedOpt family: as the pseudo-gradient of their server optimiser), adapts the
bound, and accounts epsilon; each client clips its update (and, for ``mechanism: local`` or
under secure aggregation, adds its noise) before it leaves the site.

Where the noise is added (z: the noise multiplier, C: the clip bound, t: the secure-aggregation
threshold, z_Δ: z after the adaptive count's share, ``fedumm.privacy.dp``):

* central: the server adds N(0, (z_Δ·C)²) to the sum of the clipped updates;
* central with secure aggregation (distributed DP): each client adds N(0, (z_Δ·C)²/t), so any
  t or more survivors' sum carries at least the central noise, which the server never sees apart;
* local: each client adds N(0, (z·C)²) to its own update; the server sees each noisy update, so
  the accountant grants no amplification by sampling (q = 1).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedumm.config import PrivacyConfig, RunConfig
from fedumm.errors import ConfigError
from fedumm.privacy import dp
from fedumm.privacy.accountant import Accountant, calibrate_noise
from fedumm.strategies import ClientUpdate, State, Strategy
from fedumm.strategies.base import deltas
from fedumm.types import derive_seed, describe_keys, state_delta

#: Keys this module adds to the broadcast's extras, and the metric a client reports.
PRIVACY_PREFIX = "privacy/"  # of the privacy state in a checkpoint's server state
CLIP_KEY = "privacy/clip_norm"
UNCLIPPED_METRIC = "dp_unclipped"
_NOISE_TAG, _COUNT_TAG, _SAMPLE_TAG = 104729, 130363, 7919


@dataclass(frozen=True)
class PrivacyPlan:
    """The resolved client-level DP parameters of a run."""

    mechanism: str  # central | local
    secure: bool  # the clients add the central noise in shares (secure aggregation)
    sample_rate: float  # q: each client's probability of taking part in a round
    expected: float  # q·N: the divisor of the noisy sum
    noise_multiplier: float  # z, what the accountant charges
    update_noise_multiplier: float  # z_Δ: the update's own noise (= z with a fixed bound)
    count_stddev: float  # σ_b of the adaptive count (0 with a fixed bound)
    shares: int  # the clients the central noise is split over (t under secure aggregation, else 1)
    delta: float
    accountant: str  # rdp | pld
    adaptive: bool
    seeded: bool

    @property
    def accounted_rate(self) -> float:
        return 1.0 if self.mechanism == "local" else self.sample_rate

    def client_noise_std(self, clip_norm: float) -> float:
        """The std of the noise a client adds to its own clipped update."""
        if self.mechanism == "local":
            return self.noise_multiplier * clip_norm
        if self.secure:
            return self.update_noise_multiplier * clip_norm / math.sqrt(self.shares)
        return 0.0

    def generator(self, *parts: int) -> torch.Generator:
        """Seeded from the run (``privacy.seeded_noise``) or from the operating system's entropy."""
        seed = derive_seed(*parts) if self.seeded else secrets.randbits(63)
        return torch.Generator().manual_seed(seed)


def plan_privacy(config: RunConfig) -> PrivacyPlan | None:
    """The run's client-level DP plan (None below level client); ``privacy.target_epsilon``
    picks z for ``federation.rounds`` rounds through the accountant."""
    privacy, federation = config.privacy, config.federation
    if privacy.level != "client":
        return None
    q = federation.fraction_fit
    expected = q * federation.num_clients
    local = privacy.mechanism == "local"
    rate = 1.0 if local else q
    if privacy.noise_multiplier is not None:
        z = privacy.noise_multiplier
    else:
        z = calibrate_noise(privacy.accountant, rate, privacy.target_epsilon, privacy.delta, federation.rounds)
    adaptive = privacy.clip_norm == "adaptive"
    count_stddev = (privacy.clipped_count_stddev or expected / 20) if adaptive else 0.0
    try:
        z_update = dp.update_noise_multiplier(z, count_stddev) if adaptive and not local else z
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    secure = privacy.secure_aggregation is not None
    return PrivacyPlan(
        mechanism=privacy.mechanism,
        secure=secure,
        sample_rate=q,
        expected=expected,
        noise_multiplier=z,
        update_noise_multiplier=z_update,
        count_stddev=count_stddev,
        shares=privacy.secure_aggregation.threshold if secure else 1,
        delta=privacy.delta,
        accountant=privacy.accountant,
        adaptive=adaptive,
        seeded=privacy.seeded_noise,
    )


def poisson_sample(client_ids: Sequence[int], rate: float, seed: int) -> list[int]:
    """Each client independently with probability ``rate`` (the sampling the accountant assumes)."""
    draws = np.random.default_rng(seed).random(len(client_ids))
    return [cid for cid, u in zip(client_ids, draws) if u < rate]


class ServerPrivacy:
    """The server's half: sampling, the clip bound, the noisy mean update, the budget."""

    def __init__(self, plan: PrivacyPlan, config: PrivacyConfig, seed: int):
        self.plan = plan
        self.config = config
        self.seed = seed
        self.clip_norm = config.initial_clip_norm if plan.adaptive else float(config.clip_norm)
        self.accountant = Accountant(
            plan.accountant,
            plan.accounted_rate,
            plan.noise_multiplier,
            plan.delta,  # type: ignore[arg-type]
        )
        self.participants = 0  # updates in the last aggregate

    def sample(self, round_num: int, client_ids: Sequence[int]) -> list[int]:
        return poisson_sample(list(client_ids), self.plan.sample_rate, derive_seed(self.seed, round_num, _SAMPLE_TAG))

    def over_budget(self, round_num: int) -> str | None:
        """Why round ``round_num`` must not run (privacy.max_epsilon), else None."""
        cap = self.config.max_epsilon
        if cap is None:
            return None
        after = self.accountant.epsilon(round_num)
        if after <= cap:
            return None
        return (
            f"privacy.max_epsilon={cap:g}: round {round_num} would take epsilon to {after:.4g} "
            f"(now {self.accountant.epsilon():.4g} after {self.accountant.rounds} rounds)"
        )

    def extras(self) -> State:
        return {CLIP_KEY: torch.tensor([self.clip_norm], dtype=torch.float32)}

    def mean_update(self, global_state: State, updates: Sequence[ClientUpdate], round_num: int) -> State:
        """(Σ clip(Δ_k) + noise) / (q·N) over the clients' plain replies. The server clips again:
        a client that skipped its clipping cannot void the bound."""
        clipped = [dp.clip(delta, self.clip_norm)[0] for delta in deltas(global_state, updates)]
        central = self.plan.mechanism == "central" and not self.plan.secure
        generator = self.plan.generator(self.seed, round_num, _NOISE_TAG) if central else None
        std = self.plan.update_noise_multiplier * self.clip_norm
        return dp.noisy_mean(clipped, global_state, std, self.plan.expected, generator)

    def finish_round(self, unclipped: float, participants: int, round_num: int) -> None:
        """After an aggregate: spend the round and, with ``clip_norm: adaptive``, move C towards the
        target quantile from the (noised) count of unclipped updates."""
        self.participants = participants
        if self.plan.adaptive:
            if not self.plan.secure:  # under secure aggregation the clients noised their bits
                noise = self.plan.generator(self.seed, round_num, _COUNT_TAG)
                unclipped += float(torch.randn(1, generator=noise)) * self.plan.count_stddev
            self.clip_norm = dp.adaptive_clip_step(
                self.clip_norm,
                unclipped,
                self.plan.expected,
                self.config.target_quantile,
                self.config.clip_learning_rate,
            )

    def spend(self) -> None:
        self.accountant.spend()

    def record(self) -> dict[str, Any]:
        """The round's ``privacy`` entry in metrics.jsonl."""
        return {
            "epsilon": self.accountant.epsilon(),
            "delta": self.plan.delta,
            "rounds": self.accountant.rounds,
            "clip_norm": self.clip_norm,
            "participants": self.participants,
        }

    def summary(self, stopped: str | None = None) -> dict[str, Any]:
        """``summary.json["privacy"]``."""
        out = {
            "epsilon": self.accountant.epsilon(),
            "delta": self.plan.delta,
            "noise_multiplier": self.plan.noise_multiplier,
            "sample_rate": self.plan.accounted_rate,
            "rounds": self.accountant.rounds,
            "accountant": self.plan.accountant,
            "mechanism": self.plan.mechanism + ("+secure_aggregation" if self.plan.secure else ""),
            "level": "client",
            "clip_norm": self.clip_norm if not self.plan.adaptive else "adaptive",
            "final_clip_norm": self.clip_norm,
        }
        if stopped:
            out["stopped"] = stopped
        return out

    def state_dict(self) -> State:
        return {
            "privacy/clip_norm": torch.tensor([self.clip_norm], dtype=torch.float64),
            "privacy/rounds": torch.tensor([self.accountant.rounds], dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = {"privacy/clip_norm", "privacy/rounds"} - set(state)
        if missing:
            raise ValueError(f"the checkpoint has no privacy state ({describe_keys(sorted(missing))})")
        self.clip_norm = float(state["privacy/clip_norm"][0])
        self.accountant.rounds = int(state["privacy/rounds"][0])


def apply_mean_update(
    strategy: Strategy, global_state: State, mean: Mapping[str, torch.Tensor], round_num: int
) -> State:
    """The strategy's step on one pre-aggregated update θ + Δ̄ (its ``needs_individual_updates``
    is None: FedAvg returns it, FedAvgM/FedOpt take Δ̄ as their pseudo-gradient)."""
    single = ClientUpdate(-1, 1, {k: global_state[k].float() + mean[k] for k in global_state})
    return strategy.aggregate(global_state, [single], round_num)


class ClientPrivacy:
    """A client's half: clip its update to the server's bound, report whether it was clipped,
    add its share of the noise (local DP, or distributed DP under secure aggregation)."""

    def __init__(self, plan: PrivacyPlan, seed: int, client_id: int):
        self.plan = plan
        self.seed = seed
        self.client_id = client_id

    def privatize(
        self, global_state: State, trained: State, server_extras: State, round_num: int
    ) -> tuple[State, dict[str, float]]:
        """(the clipped, possibly noised delta Δ̃_k; metrics: the unclipped bit, noised under
        secure aggregation)."""
        if CLIP_KEY not in server_extras:
            raise ValueError(f"the global message carries no {CLIP_KEY} (a server without privacy.level=client)")
        bound = float(server_extras[CLIP_KEY][0])
        delta = state_delta(trained, global_state)
        clipped, norm = dp.clip(delta, bound)
        generator = self.plan.generator(self.seed, round_num, self.client_id, _NOISE_TAG)
        std = self.plan.client_noise_std(bound)
        if std > 0:
            noise = dp.gaussian_like(clipped, std, generator)
            clipped = {k: v + noise[k] for k, v in clipped.items()}
        bit = float(norm <= bound)
        if self.plan.secure and self.plan.adaptive:
            bit += float(torch.randn(1, generator=generator)) * self.plan.count_stddev / math.sqrt(self.plan.shares)
        return clipped, {UNCLIPPED_METRIC: bit}
