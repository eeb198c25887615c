"""An exchange round-trip in FLARE's simulator: after each round's fit the server runs one
exchange stage ("echo") through ``FlareTransport.exchange``, each site answering its own message
with a test-only protocol that fit opened; the answers come back by client id and the stage's
bytes are in the round's record.

The protocol is not part of fedumm yet, so the test wires it into the FLARE processes with a
``sitecustomize`` module on their PYTHONPATH (every simulator process imports it at start-up)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("nvflare")

from fedumm.engines.nvflare import simulate_nvflare  # noqa: E402
from fedumm.validation import load_run_config  # noqa: E402

pytestmark = pytest.mark.slow

ECHO_ENV = "FEDUMM_TEST_ECHO_OUT"
SITECUSTOMIZE = f'''
import json
import os

if os.environ.get("{ECHO_ENV}"):
    from fedumm.engines.nvflare.controller import FlareTransport
    from fedumm.federation import ClientRuntime

    class Echo:
        def __init__(self, cid):
            self.cid = cid

        def handle(self, stage, message):
            return b"client%d:%s:" % (self.cid, stage.encode()) + message

    real_client_fit = ClientRuntime.fit

    def client_fit(self, message, round_num, progress=False):
        reply = real_client_fit(self, message, round_num, progress)
        self.protocol = Echo(self.client_id)
        return reply

    real_fit = FlareTransport.fit

    def fit(self, client_ids, message, round_num):
        replies = real_fit(self, client_ids, message, round_num)
        messages = {{r.client_id: b"r%dc%d" % (round_num, r.client_id) * 1000 for r in replies}}
        answers = self.exchange("echo", messages, round_num)
        line = {{"round": round_num, "answers": {{str(c): a.hex() for c, a in answers.items()}}}}
        with open(os.environ["{ECHO_ENV}"], "a") as out:
            out.write(json.dumps(line) + "\\n")
        return replies

    ClientRuntime.fit = client_fit
    FlareTransport.fit = fit
'''


def test_an_exchange_stage_round_trips_through_the_simulator(tiny_job, tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    echoes = tmp_path / "echoes.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv(ECHO_ENV, str(echoes))
    config = load_run_config(None, tiny_job(tmp_path / "runs", "echo", "engine.name=nvflare", "engine.timeout=300"))
    result = simulate_nvflare(config)
    lines = [json.loads(line) for line in echoes.read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    for line in lines:
        r = line["round"]
        answers = {int(c): bytes.fromhex(a) for c, a in line["answers"].items()}
        assert answers == {c: b"client%d:echo:" % c + b"r%dc%d" % (r, c) * 1000 for c in (0, 1)}
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    for record in records[1:]:
        wire = record["nvflare_bytes"]
        echo = wire["exchange"]["echo"]
        for direction in ("download", "upload"):
            assert set(echo[direction]) == {"0", "1"}
            assert all(4000 < n < 4000 + 16_384 for n in echo[direction].values())  # the message, FLARE's envelope
        assert echo["total"] == sum(echo["download"].values()) + sum(echo["upload"].values())
        fit_total = sum(wire["download"].values()) + sum(wire["upload"].values())
        assert wire["total"] == fit_total + echo["total"]
