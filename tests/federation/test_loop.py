"""THE round loop over an injected transport: replies in, FedAvg out, one record and one
checkpoint per round, the transport's hooks in the record, progress lines out."""

from __future__ import annotations

import json

import pytest
import torch

from fedumm import codec
from fedumm.errors import AggregationError
from fedumm.federation import FitReply, ModelHost, Server, Transport, run_rounds
from fedumm.federation.loop import round_line
from fedumm.federation.transport import ClientStates, SetupInfo
from fedumm.runlog import RunFolder, read_checkpoint
from fedumm.validation import load_run_config

STEP = 0.01  # client c moves every trained tensor by (c + 1) * STEP and claims c + 1 samples


class ShiftTransport(Transport):
    """Two clients whose replies are hand-computable: global + (c + 1) * STEP."""

    def __init__(self, hold_state: bool = False):
        self.calls: list[tuple[list[int], int]] = []
        self.hold_state = hold_state

    @property
    def client_ids(self) -> list[int]:
        return [0, 1]

    def setup(self) -> SetupInfo:
        raise AssertionError("run_rounds never asks for the setup")

    def fit(self, client_ids, message, round_num):
        self.calls.append((list(client_ids), round_num))
        state = codec.decode_message(message)["state"]
        return [
            FitReply(c, codec.encode_message({"state": {k: v + (c + 1) * STEP for k, v in state.items()}}), c + 1)
            for c in client_ids
        ]

    def held_client_states(self):
        return ClientStates({0: {"x": torch.ones(2)}}, {}) if self.hold_state else None

    def round_extras(self):
        return {"wire_note": len(self.calls)}


@pytest.fixture()
def setup(tmp_path, tiny_llava_path):
    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "federation.num_clients=2",
            "federation.rounds=2",
            "output.progress=false",
            f"output.dir={tmp_path}",
            "eval.centralized_baseline=false",
        ],
    )
    host = ModelHost(config)
    server = Server.from_config(config, host.initial_state, 2)
    test = [{"question": "what colour?", "image": None, "answers": ["red"] * 10, "multiple_choice_answer": "red"}]
    return config, host, server, test, RunFolder.create(config)


def test_rounds_aggregate_replies_record_hooks_and_checkpoint(setup):
    config, host, server, test, run = setup
    transport, lines = ShiftTransport(), []
    initial = {k: v.clone() for k, v in host.initial_state.items()}
    # Execute
    result = run_rounds(config, host, server, transport, test, run, "federated", log=lines.append)
    # Assert: FedAvg of shifts 1*STEP and 2*STEP weighted 1:2 = 5/3 STEP per round, two rounds.
    expected_shift = 2 * (1 * 1 + 2 * 2) / 3 * STEP
    for key, value in result.final_state.items():
        assert torch.allclose(value, initial[key] + expected_shift, atol=1e-6)
    assert transport.calls == [([0, 1], 1), ([0, 1], 2)]
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [r.get("wire_note") for r in records] == [None, 1, 2]  # the round_extras hook
    assert records[1]["client_metrics"] == {"0": {"num_samples": 1}, "1": {"num_samples": 2}}
    assert records[1]["bytes"]["total"] == sum(records[1]["bytes"]["upload"].values()) + 2 * next(
        iter(records[1]["bytes"]["download"].values())
    )
    checkpoint = read_checkpoint(run.path)
    assert checkpoint.round == 2 and checkpoint.metadata["num_clients"] == "2"
    assert not checkpoint.clients_saved  # held_client_states() None: the clients keep theirs
    assert lines == [round_line(r, 2, "vqa_accuracy", "federated") for r in records[1:]]


def test_held_client_state_goes_into_the_checkpoint(setup):
    config, host, server, test, run = setup
    run_rounds(config, host, server, ShiftTransport(hold_state=True), test, run, "federated")
    checkpoint = read_checkpoint(run.path)
    assert checkpoint.clients_file == checkpoint.path and checkpoint.clients_saved  # one file holds both
    assert torch.equal(checkpoint.client_states[0]["x"], torch.ones(2))


def test_a_resumed_server_continues_after_its_round(setup):
    config, host, server, test, run = setup
    prior = [{"phase": "federated", "round": 1, "global": {"vqa_accuracy": 0.5}}]
    server.start_round = 1
    transport = ShiftTransport()
    result = run_rounds(config, host, server, transport, test, run, "federated", prior_records=prior)
    assert transport.calls == [([0, 1], 2)]
    assert [r["round"] for r in result.records] == [1, 2]  # the prior record of round 1 is not re-evaluated


class PoisonTransport(ShiftTransport):
    """Client 0 replies NaN; client 1 never answers."""

    def fit(self, client_ids, message, round_num):
        replies = super().fit([c for c in client_ids if c != 1], message, round_num)
        state = codec.decode_message(replies[0].payload)["state"]
        nan = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
        return [FitReply(0, codec.encode_message({"state": nan}), 1)]


def test_a_round_without_enough_valid_replies_keeps_the_model_then_the_run_stops(setup):
    config, host, server, test, run = setup
    config.federation.max_failed_rounds = 2
    initial = {k: v.clone() for k, v in server.global_state.items()}
    lines = []
    with pytest.raises(AggregationError, match=r"federated round 2: 2 round\(s\) in a row without an aggregate"):
        run_rounds(config, host, server, PoisonTransport(), test, run, "federated", log=lines.append)
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert records[1]["rejected"] == {"0": "non-finite values (NaN or inf) in its tensors"}
    assert records[1]["missing"] == [1] and records[1]["aggregated"] is False
    assert records[1]["client_metrics"] == {}
    assert all(torch.equal(server.global_state[k], v) for k, v in initial.items())  # nothing absorbed
    assert read_checkpoint(run.path).round == 2  # both failed rounds are on disk, resumable
    assert "client 0 rejected: non-finite values" in lines[1] and "no reply from clients [1]" in lines[1]


def test_the_valid_replies_aggregate_when_enough_remain(setup):
    config, host, server, test, run = setup
    config.federation.rounds = 1
    initial = {k: v.clone() for k, v in server.global_state.items()}

    class OneBad(ShiftTransport):
        def fit(self, client_ids, message, round_num):
            replies = super().fit(client_ids, message, round_num)
            return [FitReply(0, replies[0].payload, 10**9), replies[1]]  # client 0 claims 1e9 samples

    result = run_rounds(config, host, server, OneBad(), test, run, "federated", sample_caps={0: 5, 1: 5})
    assert result.records[1]["rejected"] == {"0": "sample count 1000000000 is not an integer in [1, 5]"}
    for key, value in result.final_state.items():  # client 1 alone: + 2 * STEP
        assert torch.allclose(value, initial[key] + 2 * STEP, atol=1e-6)


def test_a_non_finite_aggregate_is_undone(setup):
    config, host, server, test, run = setup
    config.federation.rounds = 1
    initial = {k: v.clone() for k, v in server.global_state.items()}
    # Valid replies at 3e38 (finite), and a strategy step that multiplies by 10: it overflows to inf.
    big = ShiftTransport()
    big.fit = lambda ids, message, r: [
        FitReply(c, codec.encode_message({"state": {k: torch.full_like(v, 3e38) for k, v in initial.items()}}), 1)
        for c in ids
    ]
    server.strategy.aggregate = lambda g, updates, r: {k: v * 10 for k, v in updates[0].state.items()}
    result = run_rounds(config, host, server, big, test, run, "federated")
    assert result.records[1]["aggregate_error"] == "the fedavg aggregate is not finite"
    assert result.records[1]["aggregated"] is False
    assert all(torch.equal(server.global_state[k], v) for k, v in initial.items())


def test_image_folders_are_round_0_the_final_round_and_the_centralized_final(tmp_path) -> None:
    from fedumm.federation.loop import image_folder

    run = RunFolder(tmp_path)
    assert image_folder(run, "federated", 0, 5) == tmp_path / "geneval" / "round_000"
    assert image_folder(run, "federated", 5, 5) == tmp_path / "geneval" / "final"
    assert image_folder(run, "centralized", 5, 5) == tmp_path / "geneval" / "centralized"
    assert image_folder(run, "federated", 3, 5) is None and image_folder(run, "centralized", 0, 5) is None
