"""FlareTransport over a FedummController whose FLARE calls are stubbed (no FLARE run): a round
returns the replies that came, in the sampled order, without the sites that failed or stayed
silent, and names them in the log; it waits federation.round_timeout (null: engine.task_timeout);
setup still needs every site and fails naming the missing ones."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("nvflare")

from nvflare.apis.fl_constant import ReturnCode  # noqa: E402
from nvflare.apis.fl_context import FLContext  # noqa: E402
from nvflare.apis.shareable import make_reply  # noqa: E402
from nvflare.app_common.abstract.fl_model import FLModel  # noqa: E402

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
        self.setup_answers = dict.fromkeys(SITES) if setup_answers is None else setup_answers
        self.engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=n) for n in SITES])
        self.abort_signal = None
        self.sent: list[dict] = []
        self.warnings: list[str] = []

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def info(self, msg: str) -> None:
        pass

    def send_model(self, task_name, data, targets, timeout, callback):  # setup: answers at once
        for name in targets:
            if name not in self.setup_answers:
                continue
            if self.setup_answers[name] is not None:
                assert not self._accept_train_result(name, make_reply(self.setup_answers[name]), FLContext())
            else:
                callback(FLModel(metrics={"fedumm_ready": 1}, meta={"client_name": name, P.META_STATS: {}}))

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
