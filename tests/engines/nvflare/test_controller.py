"""FlareTransport over a FedummController whose FLARE calls are stubbed (no FLARE run): a round
returns the replies that came, in the sampled order, without the sites that failed or stayed
silent, and names them in the log; it waits federation.round_timeout (null: engine.task_timeout);
setup still needs every site and fails naming the missing ones. An exchange step gives each site
its own message and returns the answers that came, without the sites that failed or stayed
silent, and its bytes go to the round's record."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

pytest.importorskip("nvflare")

from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.apis.shareable import make_reply  # noqa: E402
from nvflare.app_common.abstract.fl_model import FLModel  # noqa: E402
from nvflare.app_common.decomposers import numpy_decomposers  # noqa: E402
from nvflare.app_common.utils.fl_model_utils import FLModelUtils  # noqa: E402

from fedumm.config import RunConfig  # noqa: E402
from fedumm.engines.nvflare import protocol as P  # noqa: E402
from fedumm.engines.nvflare.controller import FedummController, FlareTransport  # noqa: E402

SITES = ["site-1", "site-2", "site-3"]


def _reply(name: str, payload: bytes) -> FLModel:
    return FLModel(
        params={P.PAYLOAD_KEY: P.pack(payload)},
        meta={"client_name": name, P.META_NUM_SAMPLES: 10, P.META_METRICS: {"train_loss": 1.0}},
    )


class StubController(FedummController):
    """The real controller's waiting and bookkeeping; FLARE's sending replaced by ``answers``:
    site -> reply payload, or a ReturnCode for an error result; absent = silent."""

    def __init__(self, answers: dict[str, bytes | str], setup_answers: dict[str, str | None] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.answers = answers
        # Exchange tasks: site -> its step (message -> answer bytes), a ReturnCode for an error
        # result, or a reason for a step that failed (META_ERROR); absent = silent.
        self.exchange_answers: dict[str, Callable[[bytes], bytes] | str | tuple[str]] = {}
        self.exchanged: list[dict] = []
        self.setup_answers = dict.fromkeys(SITES) if setup_answers is None else setup_answers
        self.engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=n) for n in SITES])
        self.abort_signal = None
        self.sent: list[dict] = []
        self.warnings: list[str] = []

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def info(self, msg: str) -> None:
        pass

    def send_model(self, task_name, data, targets, timeout, callback):  # answers at once
        if task_name == P.EXCHANGE_TASK:
            return self._exchange(data, targets, timeout, callback)
        for name in targets:
            if name not in self.setup_answers:
                continue
            if self.setup_answers[name] is not None:
                assert not self._accept_train_result(name, make_reply(self.setup_answers[name]), FLContext())
            else:
                callback(FLModel(metrics={"fedumm_ready": 1}, meta={"client_name": name, P.META_STATS: {}}))

    def _exchange(self, data: FLModel, targets: list[str], timeout: int, callback) -> None:
        (name,) = targets  # one task per site: each carries its own payload
        message = P.unpack(data.params)
        self.exchanged.append({"site": name, "message": message, "meta": dict(data.meta), "timeout": timeout})
        self._measure("download", _ctx(name), FLModelUtils.to_shareable(data))  # as FLARE's task filter does
        answer = self.exchange_answers.get(name)
        if isinstance(answer, str):
            assert not self._accept_train_result(name, make_reply(answer), FLContext())
        elif isinstance(answer, tuple):
            meta = {"client_name": name, P.META_ERROR: answer[0]}
            assert callback(FLModel(metrics={"fedumm_failed": 1}, meta=meta)) is False
        elif answer is not None:
            reply = FLModel(
                params={P.PAYLOAD_KEY: P.pack(answer(message))}, meta={P.META_STAGE: data.meta[P.META_STAGE]}
            )
            self._measure("upload", _ctx(name), FLModelUtils.to_shareable(reply))
            reply.meta["client_name"] = name
            assert callback(reply) is not False

    def get_num_standing_tasks(self) -> int:
        return 0

    def send_model_and_wait(self, task_name, data, targets, timeout):
        self.sent.append({"task": task_name, "targets": list(targets), "timeout": timeout})
        results = []
        for name in targets:
            answer = self.answers.get(name)
            if isinstance(answer, str):  # an error result goes through FLARE's acceptance hook
                assert not self._accept_train_result(name, make_reply(answer), FLContext())
            elif answer is not None:
                results.append(_reply(name, answer))
        return results


def _ctx(client: str) -> FLContext:
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, client)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.TASK_NAME, P.EXCHANGE_TASK)
    fl_ctx.set_peer_context(peer)
    return fl_ctx


def _missing(controller: StubController) -> list[str]:
    """Our warnings (FLARE logs its own line for an error result too)."""
    return [w for w in controller.warnings if "missing from this round" in w]


def _transport(controller: StubController, round_timeout: float | None = 3.5) -> FlareTransport:
    config = RunConfig.model_validate(
        {"federation": {"num_clients": len(SITES), "round_timeout": round_timeout}, "engine": {"name": "nvflare"}}
    )
    return FlareTransport(controller, config)


def test_a_round_returns_the_replies_that_came_and_names_the_missing_sites():
    controller = StubController(
        {"site-1": b"one", "site-2": ReturnCode.EXECUTION_EXCEPTION, "site-3": b"three"}, task_timeout=100
    )
    transport = _transport(controller)
    replies = transport.fit([2, 0, 1], b"global", round_num=1)
    assert [(r.client_id, r.payload) for r in replies] == [(2, b"three"), (0, b"one")]  # sampled order
    assert replies[0].num_samples == 10 and replies[0].metrics == {"train_loss": 1.0}
    # FLARE's task timeout is whole seconds: 3.5 s rounds up.
    assert controller.sent == [{"task": P.TRAIN_TASK, "targets": ["site-3", "site-1", "site-2"], "timeout": 4}]
    assert _missing(controller) == [
        f"{P.TRAIN_TASK}: site-2 is missing from this round: answered with error {ReturnCode.EXECUTION_EXCEPTION}"
    ]
    # A silent site is missing too.
    del controller.answers["site-1"]
    assert [r.client_id for r in transport.fit([0, 2], b"global", round_num=2)] == [2]
    assert _missing(controller)[-1] == f"{P.TRAIN_TASK}: site-1 is missing from this round: no answer within 3.5s"
    # Both are asked again when sampled later, and answer: no error of an earlier round sticks.
    controller.answers.update({"site-1": b"one", "site-2": b"two"})
    assert [r.client_id for r in transport.fit([0, 1], b"global", round_num=3)] == [0, 1]
    assert controller.sent[-1]["targets"] == ["site-1", "site-2"]
    assert len(_missing(controller)) == 2


def test_a_round_waits_engine_task_timeout_when_round_timeout_is_null():
    controller = StubController(dict.fromkeys(SITES, b"x"), task_timeout=120)
    _transport(controller, round_timeout=None).fit([0, 1, 2], b"global", round_num=1)
    assert controller.sent[-1]["timeout"] == 120
    assert not _missing(controller)


def test_setup_needs_every_site_and_names_the_missing_one():
    controller = StubController({}, setup_answers={"site-1": None, "site-3": None}, task_timeout=60)
    with pytest.raises(RuntimeError, match=r"fedumm_setup: 2 of 3 clients answered \(site-2: no answer within 60s;"):
        _transport(controller).setup()
    errors = {"site-1": None, "site-2": None, "site-3": ReturnCode.EXECUTION_EXCEPTION}
    with pytest.raises(RuntimeError, match=r"2 of 3 clients answered \(site-3: answered with error EXECUTION_EXC"):
        _transport(StubController({}, setup_answers=errors)).setup()


def test_an_exchange_gives_each_site_its_own_message_and_returns_the_answers_that_came():
    numpy_decomposers.register()  # as in every FLARE process: the measured messages hold arrays
    controller = StubController(dict.fromkeys(SITES, b"x"), task_timeout=100)
    transport = _transport(controller, round_timeout=2.5)
    controller.exchange_answers = {
        "site-1": lambda m: b"answer-1:" + m,
        "site-2": ReturnCode.EXECUTION_EXCEPTION,
        "site-3": lambda m: b"answer-3:" + m * 1000,
    }
    transport.fit([0, 1, 2], b"global", round_num=4)
    messages = {2: b"for-2", 0: b"for-0", 1: b"for-1"}
    answers = transport.exchange("share_keys", messages, round_num=4)
    assert answers == {2: b"answer-3:" + b"for-2" * 1000, 0: b"answer-1:for-0"}
    # Each site got its own bytes, its stage and round, with the round's timeout in whole seconds.
    sent = {e["site"]: e for e in controller.exchanged}
    assert {name: e["message"] for name, e in sent.items()} == {
        "site-1": b"for-0",
        "site-2": b"for-1",
        "site-3": b"for-2",
    }
    assert all(e["meta"][P.META_STAGE] == "share_keys" and e["meta"][P.META_ROUND] == 4 for e in sent.values())
    assert {e["timeout"] for e in sent.values()} == {3}
    assert _missing(controller) == [
        f"{P.EXCHANGE_TASK} 'share_keys': site-2 is missing from this round: "
        f"answered with error {ReturnCode.EXECUTION_EXCEPTION}"
    ]
    # A site whose step failed (its protocol refused the message) and a silent one are absent too.
    controller.exchange_answers = {"site-1": ("stage out of order",), "site-3": lambda m: m}
    assert transport.exchange("unmask", {0: b"u0", 1: b"u1", 2: b"u2"}, round_num=4) == {2: b"u2"}
    assert _missing(controller)[-2:] == [
        f"{P.EXCHANGE_TASK} 'unmask': site-1 is missing from this round: answered with error stage out of order",
        f"{P.EXCHANGE_TASK} 'unmask': site-2 is missing from this round: no answer within 2.5s",
    ]
    # The round's record: each stage's whole messages by client id, answered uploads only; the total has them all.
    wire = transport.round_extras()["nvflare_bytes"]
    stages = wire["exchange"]
    assert set(stages) == {"share_keys", "unmask"}
    assert set(stages["share_keys"]["download"]) == {"0", "1", "2"} and set(stages["share_keys"]["upload"]) == {
        "0",
        "2",
    }
    assert 5000 < stages["share_keys"]["upload"]["2"] < 5000 + 4096
    assert set(stages["unmask"]["download"]) == {"0", "1", "2"} and set(stages["unmask"]["upload"]) == {"2"}
    for stage in stages.values():
        assert stage["total"] == sum(stage["download"].values()) + sum(stage["upload"].values())
    fit_total = sum(wire["download"].values()) + sum(wire["upload"].values())
    assert wire["total"] == fit_total + sum(stage["total"] for stage in stages.values())
    # The next round's record starts without them.
    transport.fit([0], b"global", round_num=5)
    assert "exchange" not in transport.round_extras()["nvflare_bytes"]
