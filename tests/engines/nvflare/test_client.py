"""The site side of an exchange task: the site's ClientRuntime answers with its open protocol's
bytes; a step its protocol refuses, or one with no protocol open, is answered as failed
(META_ERROR, no payload) and the site stays in the job."""

from __future__ import annotations

import torch

from fedumm.data.federated import ClientData
from fedumm.engines.nvflare import protocol as P
from fedumm.engines.nvflare.client import ClientSession
from fedumm.federation import ClientRuntime
from fedumm.validation import load_run_config


class EchoProtocol:
    """A test-only client protocol: answers ``stage:message``; refuses the stage "bad"."""

    def __init__(self):
        self.seen: list[tuple[str, bytes]] = []

    def handle(self, stage: str, message: bytes) -> bytes:
        self.seen.append((stage, message))
        if stage == "bad":
            raise ValueError("stage 'bad' out of order")
        return stage.encode() + b":" + message


def _session(tmp_path) -> ClientSession:
    config = load_run_config(None, ["engine.name=nvflare", "federation.num_clients=2"])
    session = ClientSession(config, "site-2", tmp_path, None)
    # Already built (the setup task did it): the exchange needs no model.
    session.runtime = ClientRuntime(ClientData(1, [], []), host=None, config=config)
    return session


META = {P.META_CLIENT_IDS: {"site-1": 0, "site-2": 1}, P.META_NUM_CLIENTS: 2, P.META_PLACEMENT: "partition"}


def test_an_exchange_task_is_answered_by_the_sites_protocol(tmp_path):
    session = _session(tmp_path)
    session.runtime.protocol = protocol = EchoProtocol()
    answer = session.exchange(b"\x00mask", {**META, P.META_ROUND: 3, P.META_STAGE: "masked_input"})
    assert P.unpack(answer["params"]) == b"masked_input:\x00mask"
    assert answer["meta"] == {P.META_ROUND: 3, P.META_STAGE: "masked_input"} and answer["current_round"] == 3
    assert protocol.seen == [("masked_input", b"\x00mask")]


def test_a_failed_step_is_answered_as_failed_and_the_site_goes_on(tmp_path):
    session = _session(tmp_path)
    failed = session.exchange(b"x", {**META, P.META_ROUND: 3, P.META_STAGE: "advertise_keys"})  # no protocol open
    assert "params" not in failed and failed["metrics"] == {"fedumm_failed": 1}
    assert failed["meta"][P.META_ERROR] == "round 3 client 1: no protocol is open for stage 'advertise_keys'"
    session.runtime.protocol = EchoProtocol()
    refused = session.exchange(b"x", {**META, P.META_ROUND: 3, P.META_STAGE: "bad"})
    assert refused["meta"][P.META_ERROR] == "round 3 client 1: stage 'bad': stage 'bad' out of order"
    assert refused["meta"][P.META_STAGE] == "bad"
    ok = session.exchange(b"y", {**META, P.META_ROUND: 3, P.META_STAGE: "unmask"})  # still in the job
    assert P.unpack(ok["params"]) == b"unmask:y"


def test_a_sites_error_feedback_residual_survives_a_client_restart(tmp_path):
    # Prepare: a site whose runtime holds an error feedback residual after a round.
    settings = ["federation.compression.codec=int8", "federation.compression.error_feedback=true"]
    config = load_run_config(None, ["engine.name=nvflare", "federation.num_clients=2", *settings])
    session = ClientSession(config, "site-2", tmp_path, None)
    session.runtime = ClientRuntime(ClientData(1, [], []), host=None, config=config)
    session.runtime.residual = {"w": torch.tensor([0.125, -3.0e-7])}
    # Execute: saved into the app folder; a restarted client process rebuilds its runtime from it.
    session._save_state()
    restarted = ClientSession(config, "site-2", tmp_path, None)
    restarted.runtime = ClientRuntime(ClientData(1, [], []), host=None, config=config)
    restarted._restore_state()
    # Assert: bit for bit (float32 in the site's state file).
    assert torch.equal(restarted.runtime.residual["w"], torch.tensor([0.125, -3.0e-7]))
    assert restarted.runtime.client_state == {} and restarted.runtime.local_state == {}
