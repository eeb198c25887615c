"""The server's side of a round, the same in every engine: sample clients, broadcast the
global state with the strategy's extras, aggregate the replies, restore from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from fedumm import codec, compression
from fedumm.config import FederationConfig, RunConfig
from fedumm.errors import AdapterStateError, ConfigError
from fedumm.federation.client import FitReply, derive_seed
from fedumm.federation.privacy import PRIVACY_PREFIX, UNCLIPPED_METRIC, ServerPrivacy, apply_mean_update, plan_privacy
from fedumm.federation.replies import ReplyRules, adapter_keys, check_replies
from fedumm.federation.secure import SecureAggregator
from fedumm.lowrank import FROZEN_DELTA_PREFIX, state_rank, truncate
from fedumm.metrics import Evaluation
from fedumm.runlog import Checkpoint, read_checkpoint
from fedumm.strategies import ClientUpdate, State, Strategy, build_strategy
from fedumm.strategies.stateful import check_per_key_state
from fedumm.types import check_state_matches


class Server:
    """Holds the global state and the strategy; samples clients, broadcasts, aggregates."""

    def __init__(
        self,
        strategy: Strategy,
        initial_state: State,
        config: FederationConfig,
        seed: int,
        privacy: ServerPrivacy | None = None,
        secure: SecureAggregator | None = None,
    ):
        self.strategy = strategy
        self.privacy = privacy  # client-level DP (privacy.level=client), else None
        self.secure = secure  # secure aggregation (privacy.secure_aggregation), else None
        self.global_state: State = {k: v.clone() for k, v in initial_state.items()}
        self.config = config
        settings = config.compression
        # federation.compression: replies carry the codec's fields of a delta, decoded in the checks.
        self.codec = compression.build_codec(settings.codec, settings.topk_fraction)
        self.seed = seed
        self.start_round = 0  # rounds already done: a resumed run continues at start_round + 1
        self.resumed: Checkpoint | None = None  # the checkpoint restored from, if any
        #: adapter.per_task: replies say which adapters they trained; each is averaged over those clients.
        self.per_task = False

    @classmethod
    def from_config(
        cls, config: RunConfig, initial_state: State, num_clients: int, checkpoint: Checkpoint | None = None
    ) -> Server:
        """The run's server, as every engine builds it: federation.strategy for this run and,
        with federation.resume_from, the global adapter and strategy state of that checkpoint
        (``checkpoint``: the one already read from there)."""
        strategy = build_strategy(config.federation.strategy, num_clients=num_clients, task=config.eval.task)
        plan = plan_privacy(config)
        privacy = ServerPrivacy(plan, config.privacy, config.seed) if plan is not None else None
        secure_config = config.privacy.secure_aggregation
        secure = SecureAggregator(secure_config, plan) if secure_config is not None else None
        ranks = config.adapter.rank_table(num_clients)
        if ranks is None and strategy.rank_aware:  # every client at R; HetLoRA may still prune
            ranks = dict.fromkeys(range(num_clients), config.adapter.r)
        if ranks is not None:
            strategy.set_client_ranks(ranks)
        server = cls(strategy, initial_state, config.federation, config.seed, privacy, secure)
        server.per_task = config.adapter.per_task
        if config.federation.resume_from:
            server.restore(checkpoint or read_checkpoint(config.federation.resume_from), config, num_clients)
        return server

    def restore(self, checkpoint: Checkpoint, config: RunConfig, num_clients: int) -> None:
        """Load a ``runlog.Checkpoint`` after checking it against this run: the model's adapter
        keys and shapes, the strategy's state keys, the clients' state keys, rounds left."""
        where = f"federation.resume_from: {checkpoint.path}"
        name = self.strategy.name
        checkpoint.check_config(config, num_clients)
        try:
            check_state_matches(
                self.global_state, checkpoint.global_state, "its global adapter does not match the model's adapter"
            )
        except AdapterStateError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        restored = {k: v.to(self.global_state[k].dtype) for k, v in checkpoint.global_state.items()}
        own = {k: v for k, v in checkpoint.server_state.items() if not k.startswith(PRIVACY_PREFIX)}
        try:
            self.strategy.load_state_dict(own, reference=restored)
            if self.privacy is not None:
                self.privacy.load_state_dict(checkpoint.server_state)
            for cid, state in checkpoint.client_states.items():
                if not 0 <= cid < num_clients:
                    raise ValueError(f"client id {cid} is not below federation.num_clients ({num_clients})")
                check_per_key_state(restored, state, f"client {cid}'s algorithm state")
        except ValueError as exc:
            raise ConfigError(f"{where}: does not fit strategy {name!r}: {exc}") from exc
        self._check_residuals(checkpoint, restored, config, num_clients)
        self.global_state = restored
        self.start_round = checkpoint.round
        self.resumed = checkpoint

    @staticmethod
    def _check_residuals(checkpoint: Checkpoint, restored: State, config: RunConfig, num_clients: int) -> None:
        """Error feedback residuals resume only into a run that keeps them, keyed like the adapter."""
        where = f"federation.resume_from: {checkpoint.path}"
        if checkpoint.residual_states and not config.federation.compression.error_feedback:
            raise ConfigError(
                f"{where} holds error feedback residuals, but federation.compression.error_feedback is false"
            )
        try:
            for cid, state in checkpoint.residual_states.items():
                if not 0 <= cid < num_clients:
                    raise ValueError(f"client id {cid} is not below federation.num_clients ({num_clients})")
                check_per_key_state(restored, state, f"client {cid}'s error feedback residual")
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def state_dict(self) -> State:
        """The server state a checkpoint keeps: the strategy's, and the privacy budget's."""
        return {**self.strategy.state_dict(), **(self.privacy.state_dict() if self.privacy else {})}

    def sample_clients(self, round_num: int, client_ids: Sequence[int]) -> list[int]:
        """federation.fraction_fit of the clients (at least min_fit_clients); under client-level
        DP, each client independently with probability fraction_fit (Poisson sampling)."""
        if self.privacy is not None:
            return self.privacy.sample(round_num, client_ids)
        count = min(len(client_ids), self.config.clients_per_round())
        if count == len(client_ids):
            return list(client_ids)
        rng = np.random.default_rng(derive_seed(self.seed, round_num, 7919))
        return sorted(rng.choice(list(client_ids), size=count, replace=False).tolist())

    def broadcast(
        self, round_num: int, sample_caps: Mapping[int, int] | None = None, client_ids: Sequence[int] = ()
    ) -> bytes | dict[int, bytes]:
        """The message every sampled client receives: global state + strategy extras (+ the clip
        bound under DP, the weight scale from ``sample_caps`` under secure aggregation, a frozen
        ΔW such as FLoRA's). Under adapter.client_ranks each of ``client_ids`` gets its own
        message, the global LoRA factors cut to its rank (``Strategy.client_rank``)."""
        extras = self.strategy.server_extras(self.global_state, round_num)
        frozen = self.strategy.frozen_delta()
        if frozen:
            extras = {**extras, **{FROZEN_DELTA_PREFIX + k: v for k, v in frozen.items()}}
        if self.privacy is not None:
            extras = {**extras, **self.privacy.extras()}
        if self.secure is not None:
            extras = {**extras, **self.secure.extras(sample_caps or {})}
        wire = self.config.wire_dtype
        global_rank = state_rank(self.global_state)
        ranks = {cid: self.strategy.client_rank(cid) for cid in client_ids}
        if all(r is None or r == global_rank for r in ranks.values()):
            return codec.encode_message({"state": self.global_state, "extras": extras}, wire)
        messages = {}
        for cid, rank in ranks.items():
            state = truncate(self.global_state, rank) if rank is not None else self.global_state
            messages[cid] = codec.encode_message({"state": state, "extras": extras}, wire)
        return messages

    def check(self, replies: Sequence[FitReply], rules: ReplyRules) -> tuple[list[ClientUpdate], dict[int, str]]:
        """The replies that pass ``federation.replies`` (and why the others do not)."""
        trained = {k: self.global_state[k] for k in rules.shapes}
        return check_replies(replies, rules, trained, self.config.validation)

    def aggregate_updates(self, updates: Sequence[ClientUpdate], round_num: int) -> bool:
        """The strategy's step over checked updates; the units not trained this round stay.

        A step whose result is not finite (e.g. an unstable server learning rate) is undone:
        the global state and the strategy's state stay as they were, and False is returned."""
        trained = {k: self.global_state[k] for k in updates[0].state}
        if self.privacy is None:
            return self._step(trained, lambda: self.strategy.aggregate(trained, updates, round_num))
        mean = self.privacy.mean_update(trained, updates, round_num)
        return self.apply_mean(
            trained, mean, round_num, sum(u.metrics.get(UNCLIPPED_METRIC, 0.0) for u in updates), len(updates)
        )

    def apply_mean(
        self, trained: State, mean: State, round_num: int, unclipped: float = 0.0, participants: int = 0
    ) -> bool:
        """The strategy's step on one pre-aggregated mean update (privacy, secure aggregation);
        with privacy, then the adaptive bound's step from the count of ``unclipped`` updates."""
        applied = self._step(trained, lambda: apply_mean_update(self.strategy, trained, mean, round_num))
        if applied and self.privacy is not None:
            self.privacy.finish_round(unclipped, participants, round_num)
        return applied

    def _step(self, trained: State, step: Callable[[], State]) -> bool:
        before = {k: v.clone() for k, v in self.strategy.state_dict().items()}
        new = step()
        if not all(bool(torch.isfinite(t).all()) for t in new.values()):
            self.strategy.load_state_dict(before, reference=self.global_state)
            return False
        self.global_state = {**self.global_state, **new}
        return True

    def rules(self, trained_keys: Sequence[str], sample_caps: dict[int, int], task: Evaluation) -> ReplyRules:
        """What this round's replies must satisfy: the trained units' shapes, the sample caps
        (federation.validation.max_samples overrides the clients' own row counts), the score range."""
        cap = self.config.validation.max_samples
        caps = {cid: cap for cid in sample_caps} if cap is not None else dict(sample_caps)
        shapes = {k: tuple(self.global_state[k].shape) for k in trained_keys}
        ranks = {cid: r for cid in self.strategy.ranks if (r := self.strategy.reply_ranks(cid)) is not None}
        return ReplyRules(
            shapes,
            caps,
            f"local_{task.primary_metric}",
            task.bounded,
            ranks,
            self.codec,
            self.config.wire_dtype,
            adapter_keys(list(shapes)) if self.per_task else {},
        )

    def aggregate(
        self, replies: Sequence[FitReply], round_num: int, trained_keys: Sequence[str] | None = None
    ) -> State:
        """Check ``replies`` against ``trained_keys`` (default: the whole global state; no sample cap)
        and aggregate those that pass; with none, the global state stays (a convenience over
        ``check`` and ``aggregate_updates``, which the round loop uses with the round's own rules)."""
        keys = list(self.global_state) if trained_keys is None else list(trained_keys)
        shapes = {k: tuple(self.global_state[k].shape) for k in keys}
        rules = ReplyRules(
            shapes,
            {},
            "",
            True,
            compression=self.codec,
            wire_dtype=self.config.wire_dtype,
            adapters=adapter_keys(keys) if self.per_task else {},
        )
        updates, _ = self.check(replies, rules)
        if updates:
            self.aggregate_updates(updates, round_num)
        return self.global_state
