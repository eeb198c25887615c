import pytest
import torch

from fedumm import codec
from fedumm.config import FederationConfig, ValidationConfig
from fedumm.federation import FitReply, Server
from fedumm.federation.replies import ReplyRules, adapter_keys, check_replies
from fedumm.strategies import FedAvg


@pytest.mark.parametrize(
    ("fraction", "minimum", "num_clients", "expected"),
    [(1.0, 1, 4, 4), (0.5, 1, 4, 2), (0.3, 1, 10, 3), (0.1, 2, 10, 2), (0.01, 1, 10, 1), (0.5, 3, 3, 3)],
)
def test_round_size_is_the_configs(fraction, minimum, num_clients, expected):
    config = FederationConfig(num_clients=num_clients, fraction_fit=fraction, min_fit_clients=minimum)
    assert config.clients_per_round() == expected
    assert len(Server(FedAvg(), {}, config, seed=3).sample_clients(1, list(range(num_clients)))) == expected


def test_sampling_is_seeded_and_varies_by_round():
    server = Server(FedAvg(), {}, FederationConfig(num_clients=10, fraction_fit=0.3), seed=1)
    first = [server.sample_clients(r, list(range(10))) for r in range(1, 6)]
    again = [server.sample_clients(r, list(range(10))) for r in range(1, 6)]
    assert first == again
    assert all(len(s) == 3 and len(set(s)) == 3 and s == sorted(s) for s in first)
    assert len({tuple(s) for s in first}) > 1


def _reply(client_id, w, num_samples):
    return FitReply(client_id, codec.encode_message({"state": {"w": torch.tensor(w)}, "extras": {}}), num_samples)


def test_server_aggregates_decoded_payloads():
    server = Server(FedAvg(), {"w": torch.zeros(2)}, FederationConfig(num_clients=2), seed=0)
    new = server.aggregate([_reply(0, [3.0, 0.0], 1), _reply(1, [0.0, 3.0], 2)], round_num=1)
    # (1*[3,0] + 2*[0,3]) / 3 = [1, 2]
    assert torch.allclose(new["w"], torch.tensor([1.0, 2.0]))
    message = codec.decode_message(server.broadcast(round_num=2))
    assert torch.allclose(message["state"]["w"], torch.tensor([1.0, 2.0]))
    assert message["extras"] == {}


def test_half_precision_wire_halves_the_message_and_keeps_server_state_float32():
    state = {"w": torch.full((1000,), 1.0 / 3.0)}
    full = Server(FedAvg(), state, FederationConfig(num_clients=1), seed=0)
    half = Server(FedAvg(), state, FederationConfig(num_clients=1, wire_dtype="float16"), seed=0)
    full_bytes, half_bytes = len(full.broadcast(1)), len(half.broadcast(1))
    assert full_bytes - half_bytes == pytest.approx(2000, abs=64)  # 4000 -> 2000 tensor bytes
    received = codec.decode_message(half.broadcast(1))["state"]["w"]
    assert received.dtype == torch.float32
    assert (received - 1.0 / 3.0).abs().max().item() < 1e-3  # fp16 rounding only
    assert half.global_state["w"].dtype == torch.float32


# ---------------------------------------------------------------- resume: Server.restore


def _fedadam_server(initial=None, rounds=3):
    from fedumm.validation import load_run_config

    config = load_run_config(
        None, ["federation.strategy.name=fedadam", "federation.num_clients=2", f"federation.rounds={rounds}"]
    )
    state = initial if initial is not None else {"w": torch.zeros(2), "b": torch.zeros(1)}
    return Server.from_config(config, state, 2), config


def _saved_checkpoint(tmp_path, server, round_num=1, **kwargs):
    from fedumm.runlog import RunFolder

    (tmp_path / "metrics.jsonl").write_text("")
    return RunFolder(tmp_path).save_checkpoint(
        round_num,
        server.global_state,
        server.strategy.state_dict(),
        strategy=server.strategy.name,
        num_clients=2,
        **kwargs,
    )


def _one_round(server):
    from fedumm.strategies import ClientUpdate

    updates = [
        ClientUpdate(0, 1, {"w": torch.tensor([1.0, -1.0]), "b": torch.tensor([0.5])}),
        ClientUpdate(1, 3, {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.5])}),
    ]
    server.global_state = server.strategy.aggregate(server.global_state, updates, 1)


def test_restore_loads_global_strategy_and_client_state(tmp_path):
    from fedumm.runlog import read_checkpoint

    # Prepare: a server one FedAdam round in, checkpointed with a client's state.
    server, config = _fedadam_server()
    _one_round(server)
    path = _saved_checkpoint(tmp_path, server, client_states={1: {"w": torch.tensor([0.25, 0.5])}})
    # Execute
    fresh, _ = _fedadam_server()
    fresh.restore(read_checkpoint(tmp_path), config, 2)
    # Assert
    assert fresh.start_round == 1 and fresh.resumed.path == path
    for key, value in server.global_state.items():
        assert torch.equal(fresh.global_state[key], value)
    restored = fresh.strategy.state_dict()
    assert set(restored) == set(server.strategy.state_dict()) == {"m/w", "m/b", "v/w", "v/b", "step/w", "step/b"}
    assert all(torch.equal(restored[k], v) for k, v in server.strategy.state_dict().items())
    assert fresh.resumed.clients_saved and torch.equal(fresh.resumed.client_states[1]["w"], torch.tensor([0.25, 0.5]))


def test_restore_casts_to_the_models_dtype(tmp_path):
    from fedumm.runlog import read_checkpoint

    server, config = _fedadam_server()
    _one_round(server)
    _saved_checkpoint(tmp_path, server)
    bf16, _ = _fedadam_server({"w": torch.zeros(2, dtype=torch.bfloat16), "b": torch.zeros(1, dtype=torch.bfloat16)})
    bf16.restore(read_checkpoint(tmp_path), config, 2)
    assert bf16.global_state["w"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("model", r"its global adapter does not match the model's adapter: 1 missing key\(s\): c"),
        ("strategy", r"was written by strategy 'fedadam', but federation.strategy.name is 'fedyogi'"),
        ("clients", r"from a run with 2 clients, but federation.num_clients is 3"),
        ("rounds", r"is at round 1 and federation.rounds is 1: nothing left to run; raise federation.rounds"),
        ("server", r"does not fit strategy 'fedadam': fedadam server state m/: key 'zzz' is not a tensor"),
        ("client_state", r"does not fit strategy 'fedadam': client 0's algorithm state: key 'q' is not a tensor"),
    ],
)
def test_restore_refuses_a_checkpoint_that_does_not_fit(tmp_path, change, fragment):
    from fedumm.errors import ConfigError
    from fedumm.runlog import RunFolder, read_checkpoint
    from fedumm.validation import load_run_config

    server, config = _fedadam_server()
    _one_round(server)
    server_state = server.strategy.state_dict()
    client_states = None
    if change == "server":
        server_state["m/zzz"] = torch.zeros(1)
    if change == "client_state":
        client_states = {0: {"q": torch.zeros(1)}}
    (tmp_path / "metrics.jsonl").write_text("")
    RunFolder(tmp_path).save_checkpoint(
        1, server.global_state, server_state, client_states=client_states, strategy="fedadam", num_clients=2
    )
    initial = {"w": torch.zeros(2), "b": torch.zeros(1)}
    num_clients, overrides = 2, ["federation.strategy.name=fedadam", "federation.num_clients=2"]
    if change == "model":
        initial["c"] = torch.zeros(1)
    elif change == "strategy":
        overrides[0] = "federation.strategy.name=fedyogi"
    elif change == "clients":
        num_clients, overrides[1] = 3, "federation.num_clients=3"
    config = load_run_config(None, [*overrides, "federation.rounds=1" if change == "rounds" else "federation.rounds=3"])
    fresh = Server.from_config(config, initial, num_clients)
    with pytest.raises(ConfigError, match=r"federation.resume_from: .*last.safetensors.*" + fragment):
        fresh.restore(read_checkpoint(tmp_path), config, num_clients)
    assert fresh.start_round == 0 and torch.equal(fresh.global_state["w"], torch.zeros(2))  # nothing loaded


# ---------------------------------------------------------------- heterogeneous LoRA ranks

_A, _B = "m.lora_A.weight", "m.lora_B.weight"


def _rank2_state():
    return {_A: torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), _B: torch.tensor([[1.0, 2.0], [3.0, 4.0]])}


def test_each_client_receives_the_global_factors_at_its_own_rank():
    from fedumm.strategies import HetLoRA

    strategy = HetLoRA(num_clients=3)
    strategy.set_client_ranks({0: 1, 1: 2, 2: 1})
    server = Server(strategy, _rank2_state(), FederationConfig(num_clients=3), seed=0)
    # Execute
    messages = server.broadcast(1, {}, [0, 1])
    # Assert: one message per asked client, cut to its rank; bytes follow the rank.
    assert set(messages) == {0, 1}
    rank1 = codec.decode_message(messages[0])["state"]
    assert torch.equal(rank1[_A], torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(rank1[_B], torch.tensor([[1.0], [3.0]]))
    assert codec.decode_message(messages[1])["state"][_A].shape == (2, 3)
    assert len(messages[0]) < len(messages[1])
    # Every client at the global rank: one message for all, as without client_ranks.
    assert isinstance(server.broadcast(1, {}, [1]), bytes)


def test_flora_sends_its_frozen_delta_in_the_extras():
    from fedumm.strategies import FLoRA
    from fedumm.strategies.base import ClientUpdate

    strategy = FLoRA()
    server = Server(strategy, _rank2_state(), FederationConfig(num_clients=1), seed=0)
    strategy.aggregate(server.global_state, [ClientUpdate(0, 1, _rank2_state())], 1)
    extras = codec.decode_message(server.broadcast(2, {}, [0]))["extras"]
    # D = B A of the one client: [[9, 12, 15], [19, 26, 33]].
    assert torch.equal(extras["frozen_delta/m"], torch.tensor([[9.0, 12.0, 15.0], [19.0, 26.0, 33.0]]))


def test_a_rank_aware_rule_without_client_ranks_accepts_a_pruned_reply():
    from fedumm.config import RunConfig
    from fedumm.federation.replies import check_replies

    config = RunConfig.model_validate(
        {"adapter": {"r": 2}, "federation": {"num_clients": 2, "strategy": {"name": "hetlora", "decay": 0.5}}}
    )
    server = Server.from_config(config, _rank2_state(), num_clients=2)
    rules = server.rules([_A, _B], {0: 10}, _task())
    pruned = {_A: torch.ones(1, 3), _B: torch.ones(2, 1)}
    reply = FitReply(0, codec.encode_message({"state": pruned}), 5)
    updates, rejected = check_replies([reply], rules, server.global_state, config.federation.validation)
    assert not rejected and updates[0].state[_A].shape == (1, 3)
    # Both clients still receive one message at the global rank.
    assert isinstance(server.broadcast(1, {}, [0, 1]), bytes)


def _task():
    from fedumm.metrics import get_task

    return get_task("vqa")


@pytest.mark.parametrize(
    ("feedback", "residual", "fragment"),
    [
        (False, {0: {"w": torch.zeros(2)}}, r"holds error feedback residuals, but .*error_feedback is false"),
        (True, {0: {"w": torch.zeros(3)}}, r"client 0's error feedback residual: shape mismatch for 'w'"),
        (True, {0: {"q": torch.zeros(1)}}, r"client 0's error feedback residual: key 'q' is not a tensor"),
        (True, {5: {"w": torch.zeros(2)}}, r"client id 5 is not below federation.num_clients \(2\)"),
    ],
)
def test_restore_checks_error_feedback_residuals(tmp_path, feedback, residual, fragment):
    from fedumm.errors import ConfigError
    from fedumm.runlog import read_checkpoint
    from fedumm.validation import load_run_config

    # Prepare: a checkpoint holding a residual; a resumed config with or without error feedback.
    server, _ = _fedadam_server()
    _saved_checkpoint(tmp_path, server, residual_states=residual)
    settings = ["federation.compression.codec=int8", "federation.compression.error_feedback=true"] if feedback else []
    config = load_run_config(
        None, ["federation.strategy.name=fedadam", "federation.num_clients=2", "federation.rounds=3", *settings]
    )
    fresh, _ = _fedadam_server()
    # Execute/Assert
    with pytest.raises(ConfigError, match=fragment):
        fresh.restore(read_checkpoint(tmp_path), config, 2)


def test_restore_keeps_a_fitting_residual(tmp_path):
    from fedumm.runlog import read_checkpoint
    from fedumm.validation import load_run_config

    server, _ = _fedadam_server()
    _saved_checkpoint(tmp_path, server, residual_states={1: {"w": torch.tensor([0.5, -0.25])}})
    config = load_run_config(
        None,
        [
            "federation.strategy.name=fedadam",
            "federation.num_clients=2",
            "federation.rounds=3",
            "federation.compression.codec=topk",
            "federation.compression.error_feedback=true",
        ],
    )
    fresh, _ = _fedadam_server()
    fresh.restore(read_checkpoint(tmp_path), config, 2)
    assert torch.equal(fresh.resumed.residual_states[1]["w"], torch.tensor([0.5, -0.25]))


# ---------------------------------------------------------------- adapter.per_task: each adapter over its contributors

_TASK_A = "m.q_proj.lora_A.understanding.weight"  # task A (understanding)
_TASK_B = "m.q_proj.lora_A.generation.weight"  # task B (generation)


def _per_task_reply(client_id, a, b, understanding_rows, generation_rows):
    state = {_TASK_A: torch.tensor(a), _TASK_B: torch.tensor(b)}
    metrics = {"trained_rows.understanding": understanding_rows, "trained_rows.generation": generation_rows}
    return FitReply(
        client_id,
        codec.encode_message({"state": state, "extras": {}}),
        understanding_rows + generation_rows,
        metrics,
    )


def _per_task_server():
    initial = {_TASK_A: torch.zeros(2), _TASK_B: torch.ones(2)}
    server = Server(FedAvg(), initial, FederationConfig(num_clients=3), seed=0)
    server.per_task = True
    return server


def test_per_task_adapters_are_averaged_over_their_contributors_only():
    # Prepare: clients 0 and 1 train task A only (2 and 6 rows); client 2 trains task B only (5 rows)
    # and sends A unchanged, clients 0 and 1 send B unchanged (the global [1, 1]).
    server = _per_task_server()
    replies = [
        _per_task_reply(0, [4.0, 0.0], [1.0, 1.0], 2, 0),
        _per_task_reply(1, [0.0, 8.0], [1.0, 1.0], 6, 0),
        _per_task_reply(2, [0.0, 0.0], [3.0, -5.0], 0, 5),
    ]
    # Execute
    new = server.aggregate(replies, round_num=1)
    # Assert: A = (2*[4,0] + 6*[0,8]) / 8 = [1, 6], client 2's 5 rows do not dilute it;
    # B = client 2's own [3, -5] (plain FedAvg over all three would give A = [8/13, 48/13]).
    assert torch.allclose(new[_TASK_A], torch.tensor([1.0, 6.0]))
    assert torch.allclose(new[_TASK_B], torch.tensor([3.0, -5.0]))


def test_an_adapter_nobody_trained_keeps_its_global_value():
    server = _per_task_server()
    replies = [_per_task_reply(0, [2.0, 2.0], [1.0, 1.0], 3, 0), _per_task_reply(1, [4.0, 0.0], [1.0, 1.0], 1, 0)]
    new = server.aggregate(replies, round_num=1)
    assert torch.allclose(new[_TASK_A], torch.tensor([2.5, 1.5]))  # (3*[2,2] + 1*[4,0]) / 4
    assert torch.equal(new[_TASK_B], torch.ones(2))


def test_a_client_training_both_adapters_weighs_each_by_its_own_rows():
    server = _per_task_server()
    replies = [_per_task_reply(0, [3.0, 3.0], [0.0, 0.0], 1, 3), _per_task_reply(1, [0.0, 0.0], [4.0, 4.0], 2, 1)]
    new = server.aggregate(replies, round_num=1)
    assert torch.allclose(new[_TASK_A], torch.tensor([1.0, 1.0]))  # (1*3 + 2*0) / 3
    assert torch.allclose(new[_TASK_B], torch.tensor([1.0, 1.0]))  # (3*0 + 1*4) / 4


@pytest.mark.parametrize(
    ("metrics", "fragment"),
    [
        ({"trained_rows.understanding": 2}, "trained_rows.generation is None"),
        ({"trained_rows.understanding": 2, "trained_rows.generation": 1.5}, "trained_rows.generation is 1.5"),
        ({"trained_rows.understanding": 2, "trained_rows.generation": 2}, "do not add up to the sample count 2"),
        ({"trained_rows.understanding": 0, "trained_rows.generation": 2}, "adapter 'understanding' changed"),
    ],
)
def test_a_per_task_reply_with_wrong_trained_rows_is_rejected(metrics, fragment):
    server = _per_task_server()
    state = {_TASK_A: torch.tensor([5.0, 5.0]), _TASK_B: torch.ones(2)}
    reply = FitReply(0, codec.encode_message({"state": state, "extras": {}}), 2, metrics)
    shapes = {k: (2,) for k in state}
    rules = ReplyRules(shapes, {}, "", True, adapters=adapter_keys(list(shapes)))
    updates, rejected = check_replies([reply], rules, server.global_state, ValidationConfig())
    assert updates == []
    assert fragment in rejected[0]
