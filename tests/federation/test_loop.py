"""THE round loop over an injected transport: replies in, FedAvg out, one record and one
checkpoint per round, the transport's hooks in the record, progress lines out."""

from __future__ import annotations

import json

import pytest
import torch

from fedumm import codec
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
