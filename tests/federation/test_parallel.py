"""Vectorised clients (engine.parallel_clients): every client's reply equals the sequential
engine's (dropout 0, fp32), for FedAvg, FedProx and SCAFFOLD, with clients of different row
counts and a K that does not divide the sampled clients; the rounds that cannot vectorise warn
once and train sequentially."""

from __future__ import annotations

import warnings

import pytest
import torch

from fedumm import codec
from fedumm.data.federated import ClientData
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.federation import LocalTransport, ModelHost, Server
from fedumm.federation.parallel import ClientJob, train_clients
from fedumm.federation.train import train_local
from fedumm.types import LocalHooks
from fedumm.validation import load_run_config

#: Rows per client: 3, 2, 2, 3 and 2 steps at batch 4 (the 5-row client ends on a 1-row batch).
ROWS = (12, 8, 5, 9, 6)
#: Joint and separate batches differ by float rounding only: gradients agree to ~1e-7 relative
#: (the base's matmuls see more rows), and SGD states to ~1e-8.
TOLERANCE = 1e-5
#: AdamW divides each coordinate by its own gradient scale, so a coordinate whose gradient sums
#: to near zero (LoRA A's first nonzero gradients, B starting at zero) takes a sign-like step that
#: rounding can change: the states agree to ~1e-4 at lr 0.005 (observed 1.2e-4); bound: 5% of lr.
ADAMW_TOLERANCE = 0.05 * 0.005


def _config(path: str, tmp_path, parallel: int, *extra: str):
    return load_run_config(
        None,
        [
            f"model.name_or_path={path}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            "adapter.dropout=0",
            f"federation.num_clients={len(ROWS)}",
            "train.batch_size=4",
            "train.optimizer=sgd",
            "train.momentum=0.9",
            "train.lr=0.1",
            "train.max_grad_norm=0.5",
            "output.progress=false",
            f"output.dir={tmp_path}",
            f"engine.parallel_clients={parallel}",
            *extra,
        ],
    )


def _clients() -> list[ClientData]:
    return [
        ClientData(cid, make_synthetic_vqa(rows, seed=10 + cid), make_synthetic_vqa(3, seed=50 + cid))
        for cid, rows in enumerate(ROWS)
    ]


def _states(replies) -> list[dict]:
    return [codec.decode_message(r.payload) for r in replies]


def _max_delta(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if a else 0.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "tolerance"),
    [
        (["federation.strategy.name=fedavg"], TOLERANCE),
        (["federation.strategy.name=fedprox", "federation.strategy.mu=0.5"], TOLERANCE),
        (["federation.strategy.name=scaffold"], TOLERANCE),
        (["train.optimizer=adamw", "train.momentum=0", "train.lr=0.005"], ADAMW_TOLERANCE),
    ],
    ids=["fedavg", "fedprox", "scaffold", "fedavg-adamw"],
)
def test_parallel_round_gives_every_client_the_sequential_state(tiny_llava_path, tmp_path, strategy, tolerance):
    # Prepare: one host, two transports that differ only in engine.parallel_clients (4 of 5 clients).
    sequential_config = _config(tiny_llava_path, tmp_path, 1, *strategy)
    parallel_config = _config(tiny_llava_path, tmp_path, 4, *strategy)
    host = ModelHost(sequential_config)
    server = Server.from_config(sequential_config, host.initial_state, len(ROWS))
    algorithm = server.strategy.client_algorithm()
    sequential = LocalTransport(_clients(), host, sequential_config, algorithm)
    parallel = LocalTransport(_clients(), host, parallel_config, algorithm)
    message = server.broadcast(1)
    ids = list(range(len(ROWS)))
    # Execute: two rounds from the same message (SCAFFOLD's second one is corrected by its c_i).
    rounds = []
    for round_num in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning: these rounds vectorise
            together = parallel.fit(ids, message, round_num)
        rounds.append((sequential.fit(ids, message, round_num), together))
    # Assert
    for one_by_one, together in rounds:
        assert [r.client_id for r in together] == ids and not any(r.error for r in together)
        for a, b, rows in zip(_states(one_by_one), _states(together), ROWS):
            assert _max_delta(a["state"], b["state"]) <= tolerance
            # SCAFFOLD's Δc_i = (x - y_i) / (K lr) - c: the state's rounding over K lr
            assert _max_delta(a.get("extras", {}), b.get("extras", {})) <= tolerance / 0.1
            assert rows > 0
        for a, b, rows in zip(one_by_one, together, ROWS):
            assert a.num_samples == b.num_samples == rows
            assert a.metrics["steps"] == b.metrics["steps"] == -(-rows // 4)
            assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], abs=1e-5)
            assert a.metrics["local_vqa_accuracy"] == b.metrics["local_vqa_accuracy"]
            assert b.metrics["train_seconds"] > 0
    # The clients really trained: every reply moved away from the global state.
    global_state = codec.decode_message(message)["state"]
    assert all(_max_delta(s["state"], global_state) > 1e-3 for s in _states(rounds[0][1]))
    if strategy[0].endswith("scaffold"):  # the client variates persist per client, equal in both engines
        for cid in ids:
            assert _max_delta(sequential.runtimes[cid].client_state, parallel.runtimes[cid].client_state) <= 1e-4


class _Penalty(LocalHooks):
    """A known extra loss, and a count of the steps taken."""

    def __init__(self):
        self.steps = 0

    def extra_loss(self, params):
        return 0.1 * sum((p**2).sum() for p in params.values())

    def after_step(self, params, lr):
        self.steps += 1


def _matches_train_local(model, backend, config, question: str | None = None) -> None:
    """Two clients of 6 and 3 rows (2 and 1 steps at batch 4) trained together end where
    train_local takes each from the same start; the model keeps its own tensors."""
    from fedumm.adapters import get_adapter_state, lora_layers, set_adapter_state

    start = get_adapter_state(model)
    data = [make_synthetic_vqa(6, seed=1), make_synthetic_vqa(3, seed=2)]
    if question is not None:
        data = [[dict(row, question=question) for row in rows] for rows in data]
    hooks = [_Penalty(), _Penalty()]
    jobs = [ClientJob(rows, 7 + i, h, start, f"client {i}") for i, (rows, h) in enumerate(zip(data, hooks))]
    # Execute
    outcomes = train_clients(model, backend, lora_layers(model), jobs, config)
    # Assert
    assert _max_delta(get_adapter_state(model), start) == 0.0
    assert [h.steps for h in hooks] == [2, 1]  # the 3-row client left the batch after its one step
    for i, outcome in enumerate(outcomes):
        set_adapter_state(model, start)
        reference = train_local(model, backend, data[i], config, 7 + i, _Penalty())
        assert outcome.result.steps == reference.steps == [2, 1][i]
        assert outcome.result.mean_loss == pytest.approx(reference.mean_loss, abs=1e-5)
        assert _max_delta(outcome.state, get_adapter_state(model)) <= TOLERANCE
        assert _max_delta(outcome.state, start) > 1e-3


def test_train_clients_matches_train_local_and_leaves_the_model_alone(lora_model):
    from fedumm.config import TrainConfig

    model, backend = lora_model
    _matches_train_local(model, backend, TrainConfig(batch_size=4, optimizer="sgd", lr=0.5, max_grad_norm=1.0))


def test_train_clients_on_blip_routes_the_encoder_and_decoder_lora(tiny_llava_path):
    # BLIP: LoRA on the text encoder's and decoder's query/key/value, self- and cross-attention.
    # transformers' BLIP decoder attends to the question's padding (its cross-attention drops
    # the mask), so a BLIP loss depends on how wide its batch is padded: one question for all
    # rows keeps the joint batch exactly as wide as each client's own.
    from fedumm.adapters import apply_lora
    from fedumm.config import AdapterConfig, ModelConfig, TrainConfig
    from fedumm.models.registry import get_backend
    from fedumm.models.tiny import resolve_model_path

    backend = get_backend("blip_vqa")(
        ModelConfig(backend="blip_vqa", name_or_path=resolve_model_path("tiny-blip-vqa"), device="cpu")
    )
    torch.manual_seed(0)
    adapter = AdapterConfig(dropout=0.0, preset="qkv")  # self- and cross-attention
    model = apply_lora(backend.load(), adapter, backend.lora_target_regex(adapter))
    config = TrainConfig(batch_size=4, optimizer="sgd", lr=0.5, max_grad_norm=1.0)
    _matches_train_local(model, backend, config, question="how many shapes are there ?")


def test_a_client_whose_loss_diverges_leaves_the_batch_alone(lora_model):
    model, backend = lora_model
    from fedumm.adapters import get_adapter_state, lora_layers
    from fedumm.config import TrainConfig

    class Diverge(LocalHooks):
        def extra_loss(self, params):
            return torch.tensor(float("inf"))

    start = get_adapter_state(model)
    jobs = [
        ClientJob(make_synthetic_vqa(4, seed=1), 1, Diverge(), start, "round 1 client 0"),
        ClientJob(make_synthetic_vqa(4, seed=2), 2, LocalHooks(), start, "round 1 client 1"),
    ]
    outcomes = train_clients(model, backend, lora_layers(model), jobs, TrainConfig(batch_size=4))
    assert outcomes[0].error.startswith("round 1 client 0: the training loss became inf at step 1 of 1")
    assert outcomes[0].state is None
    assert outcomes[1].error is None and outcomes[1].result.steps == 1
    assert _max_delta(outcomes[1].state, start) > 0


def test_parallel_clients_below_one_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_run_config(None, ["engine.parallel_clients=0"])
    assert str(caught.value).count("\n") == 0 and "engine.parallel_clients" in str(caught.value)


def test_a_round_that_cannot_vectorise_warns_once_and_trains_sequentially(tiny_llava_path, tmp_path):
    # Prepare: DP-SGD cannot vectorise.
    extra = ("train.local_steps=1", "eval.clients=false", "privacy.level=sample", "privacy.noise_multiplier=1.0")
    config = _config(tiny_llava_path, tmp_path, 4, *extra)
    host = ModelHost(config)
    server = Server.from_config(config, host.initial_state, len(ROWS))
    transport = LocalTransport(_clients()[:2], host, config, server.strategy.client_algorithm())
    # Execute: two rounds, one warning.
    with pytest.warns(UserWarning) as caught:
        replies = transport.fit([0, 1], server.broadcast(1), 1) + transport.fit([0, 1], server.broadcast(2), 2)
    # Assert
    messages = [str(w.message) for w in caught if "parallel_clients" in str(w.message)]
    assert messages == [
        "engine.parallel_clients=4: round 1 trains its clients one after another: DP-SGD (privacy.level: sample) "
        "clips each row of each client's own Poisson batch"
    ]
    assert [r.metrics["steps"] for r in replies] == [1, 1, 1, 1]


def test_round_blocker_names_each_reason(tiny_llava_path, tmp_path):
    host = ModelHost(_config(tiny_llava_path, tmp_path, 4))
    assert host.parallel_blocker(1) is None
    connector = ModelHost(_config(tiny_llava_path, tmp_path, 4, "finetune.strategy=lora+connector"))
    assert connector.parallel_blocker(1) == "the round trains lora, connector, not LoRA alone"
