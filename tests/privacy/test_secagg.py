"""Secure aggregation (fedumm.privacy.secagg): the sum comes out right with and without drop-outs,
an upload on its own looks uniform, and malformed or forbidden messages are dropped or refused."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedumm.errors import AggregationError, ConfigError
from fedumm.privacy.secagg import (
    STAGES,
    Exchange,
    SecAggClient,
    SecAggMessageError,
    SecAggParams,
    SecAggParamsError,
    local_exchange,
    quantize,
    secure_sum,
)

SIZE = 1000


def make_round(n: int, threshold: int, size: int = SIZE, scale: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = SecAggParams(clients=tuple(range(10, 10 + n)), threshold=threshold, vector_size=size)
    vectors = {cid: rng.normal(scale=scale, size=size) for cid in params.clients}
    clients = {cid: SecAggClient(cid, v) for cid, v in vectors.items()}
    return params, vectors, clients


def expected_sum(vectors: dict[int, np.ndarray], cids: list[int], r: float = 8.0) -> np.ndarray:
    return sum(np.clip(vectors[c], -r, r) for c in cids)


def max_error(total: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(total - expected)))


def rewriting(inner: Exchange, stage: str, rewrite) -> Exchange:
    """An Exchange that passes ``rewrite(cid, answer)`` on for ``stage``'s answers."""

    def exchange(s: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        answers = inner(s, messages)
        return {cid: rewrite(cid, a) for cid, a in answers.items()} if s == stage else answers

    return exchange


@pytest.mark.parametrize("n", [3, 5, 8])
def test_sum_matches_plain_sum_within_quantization(n):
    # Prepare
    params, vectors, clients = make_round(n, threshold=n // 2 + 1, scale=4.0)

    # Execute
    result = secure_sum(params, local_exchange(clients))

    # Assert: every coordinate rounds by at most step/2 per client (scale 4 also exercises clamping)
    assert result.survivors == list(params.clients)
    assert result.dropped == []
    assert result.total.dtype == np.float64 and result.total.shape == (SIZE,)
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= n * params.step() / 2 + 1e-12


def test_single_masked_upload_is_uncorrelated_and_uniform():
    # Prepare: a strongly structured input (a ramp), so an unmasked upload would correlate fully
    size = 10_000
    params = SecAggParams(clients=(1, 2, 3), threshold=2, vector_size=size)
    vectors = {c: np.linspace(-8, 8, size) * (1 if c != 2 else -1) for c in params.clients}
    clients = {c: SecAggClient(c, v) for c, v in vectors.items()}
    uploads: dict[int, bytes] = {}

    def capture(cid: int, answer: bytes) -> bytes:
        uploads[cid] = answer
        return answer

    # Execute
    result = secure_sum(params, rewriting(local_exchange(clients), "masked_input", capture))

    # Assert
    quantized = quantize(vectors[1], params).astype(np.float64)
    masked = np.frombuffer(uploads[1], dtype="<u8").astype(np.float64)
    assert abs(np.corrcoef(quantized, quantized + 1.0)[0, 1]) > 0.99  # the check can tell structure
    assert abs(np.corrcoef(masked, quantized)[0, 1]) < 0.1
    assert abs(np.mean(masked / 2.0**64) - 0.5) < 0.02
    assert max_error(result.total, expected_sum(vectors, [1, 2, 3])) <= 3 * params.step() / 2 + 1e-12


@pytest.mark.parametrize("n_drop", [1, 3])
def test_drop_after_share_keys_removes_their_masks(n_drop):
    # Prepare: n=6, t=3, so up to n - t = 3 may drop before masked_input
    params, vectors, clients = make_round(6, threshold=3)
    gone = set(params.clients[1 : 1 + n_drop])

    # Execute
    result = secure_sum(params, local_exchange(clients, drop={"masked_input": gone}))

    # Assert
    assert result.dropped == sorted(gone)
    assert result.survivors == [c for c in params.clients if c not in gone]
    n = len(result.survivors)
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= n * params.step() / 2 + 1e-12


def test_drop_after_masked_input_still_counts_the_input():
    # Prepare
    params, vectors, clients = make_round(5, threshold=3)
    late = params.clients[2]

    # Execute
    result = secure_sum(params, local_exchange(clients, drop={"unmask": {late}}))

    # Assert: it uploaded, so it is a survivor; its self mask comes back from the others' shares
    assert late in result.survivors and result.dropped == []
    assert max_error(result.total, expected_sum(vectors, list(params.clients))) <= 5 * params.step() / 2 + 1e-12


def test_drops_at_both_stages():
    # Prepare
    params, vectors, clients = make_round(7, threshold=3)
    early, late = {params.clients[0], params.clients[5]}, {params.clients[3], params.clients[6]}

    # Execute
    result = secure_sum(params, local_exchange(clients, drop={"masked_input": early, "unmask": late}))

    # Assert
    assert result.dropped == sorted(early)
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= 5 * params.step() / 2 + 1e-12


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys", "masked_input", "unmask"])
def test_too_many_drops_fail_naming_the_stage(stage):
    # Prepare: n - t + 1 = 3 drop-outs leave 2 < t = 3
    params, _, clients = make_round(5, threshold=3)
    exchange = local_exchange(clients, drop={stage: set(params.clients[:3])})

    # Execute / Assert
    with pytest.raises(AggregationError, match=rf"stage '{stage}': 2 clients answered validly, threshold 3"):
        secure_sum(params, exchange)


def tamper_ciphertext(answer: bytes, receiver: int, how: str) -> bytes:
    obj = json.loads(answer)
    blob = bytearray(base64.b64decode(obj["ciphertexts"][str(receiver)]))
    if how == "flip":
        blob[40] ^= 0x01
    else:
        blob = blob[:-1]
    obj["ciphertexts"][str(receiver)] = base64.b64encode(bytes(blob)).decode()
    return json.dumps(obj).encode()


def test_ciphertext_failing_authentication_costs_one_share_only():
    # Prepare: client 10's shares for client 11 are altered in transit (same length)
    params, vectors, clients = make_round(5, threshold=3)
    replies: dict[int, bytes] = {}

    def flip(cid: int, answer: bytes) -> bytes:
        return tamper_ciphertext(answer, 11, "flip") if cid == 10 else answer

    def capture(cid: int, answer: bytes) -> bytes:
        replies[cid] = answer
        return answer

    exchange = rewriting(rewriting(local_exchange(clients), "share_keys", flip), "unmask", capture)

    # Execute
    result = secure_sum(params, exchange)

    # Assert: AES-GCM rejected it, 11 said so and gave no share of 10; the others' shares sufficed
    assert json.loads(replies[11])["undecryptable"] == [10]
    assert "10" not in json.loads(replies[11])["b_shares"]
    assert result.survivors == list(params.clients)
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= 5 * params.step() / 2 + 1e-12


def test_malformed_ciphertext_drops_its_sender():
    # Prepare: client 10's ciphertext for client 12 is one byte short
    params, vectors, clients = make_round(5, threshold=3)

    def cut(cid: int, answer: bytes) -> bytes:
        return tamper_ciphertext(answer, 12, "cut") if cid == 10 else answer

    # Execute
    result = secure_sum(params, rewriting(local_exchange(clients), "share_keys", cut))

    # Assert: 10 never joined the masking, so it is neither survivor nor dropped
    assert result.survivors == [11, 12, 13, 14] and result.dropped == []
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= 4 * params.step() / 2 + 1e-12


def test_wrong_length_vector_drops_its_sender():
    # Prepare
    params, vectors, clients = make_round(5, threshold=3)

    def shorten(cid: int, answer: bytes) -> bytes:
        return answer[:-8] if cid == 13 else answer

    # Execute
    result = secure_sum(params, rewriting(local_exchange(clients), "masked_input", shorten))

    # Assert
    assert result.dropped == [13]
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= 4 * params.step() / 2 + 1e-12


def test_garbage_key_advertisement_drops_its_sender():
    # Prepare
    params, vectors, clients = make_round(4, threshold=2)

    def garble(cid: int, answer: bytes) -> bytes:
        return b"\x80\x04not json" if cid == 11 else answer

    # Execute
    result = secure_sum(params, rewriting(local_exchange(clients), "advertise_keys", garble))

    # Assert
    assert result.survivors == [10, 12, 13] and result.dropped == []
    assert max_error(result.total, expected_sum(vectors, result.survivors)) <= 3 * params.step() / 2 + 1e-12


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"survivors": [10, 11, 12, 13], "dropped": [13]}, "both survivor and dropped"),
        ({"survivors": [10, 11, 12], "dropped": [99]}, "did not share keys"),
        ({"survivors": [11, 12, 13], "dropped": [10]}, "not named a survivor"),
        ({"survivors": [10, 11], "dropped": [12, 13]}, "threshold 3"),
    ],
)
def test_unmask_request_that_could_open_an_input_is_refused(request_, match):
    # Prepare: the server sends a forbidden unmask request to client 10
    params, _, clients = make_round(4, threshold=3)
    inner = local_exchange(clients)

    def exchange(stage: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "unmask":
            messages = {10: json.dumps(request_).encode()}
        return inner(stage, messages)

    # Execute / Assert
    with pytest.raises(SecAggMessageError, match=rf"unmask: refused: .*{match}"):
        secure_sum(params, exchange)


def test_inputs_beyond_the_range_are_clamped():
    # Prepare
    params = SecAggParams(clients=(1, 2, 3), threshold=2, vector_size=4, clipping_range=1.0)
    vectors = {
        1: np.array([100.0, -100.0, 0.5, 1.0]),
        2: np.array([3.0, -0.25, -7.0, 1.0]),
        3: np.array([0.0, 0.0, 0.0, 1e9]),
    }
    clients = {c: SecAggClient(c, v) for c, v in vectors.items()}

    # Execute
    result = secure_sum(params, local_exchange(clients))

    # Assert
    np.testing.assert_allclose(result.total, [2.0, -1.25, -0.5, 3.0], atol=3 * params.step() / 2 + 1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1}, "threshold"),
        ({"threshold": 5}, "threshold"),
        ({"clients": (1, 2, 2, 3)}, "duplicate"),
        ({"clients": (1, -2, 3)}, "client ids"),
        ({"quantization_bits": 7}, "quantization_bits"),
        ({"quantization_bits": 41}, "quantization_bits"),
        ({"vector_size": 0}, "vector_size"),
        ({"clipping_range": 0.0}, "clipping_range"),
        ({"clipping_range": float("inf")}, "clipping_range"),
        ({"clients": tuple(range(2**23)), "threshold": 2, "quantization_bits": 40}, "overflow"),
    ],
)
def test_params_validation(kwargs, match):
    # Prepare
    base = {"clients": (1, 2, 3, 4), "threshold": 2, "vector_size": 10}

    # Execute / Assert: a ConfigError for the CLI and a ValueError for code
    with pytest.raises(SecAggParamsError, match=match) as info:
        SecAggParams(**{**base, **kwargs})
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_params_round_trip_and_malformed_params():
    # Prepare
    params = SecAggParams(clients=(5, 1, 3), threshold=2, vector_size=7, clipping_range=2.5, round_num=4)

    # Execute
    again = SecAggParams.from_bytes(params.to_bytes())

    # Assert
    assert again == params and again.clients == (1, 3, 5)
    assert params.step() == pytest.approx(5.0 / (2**24 - 1))
    with pytest.raises(SecAggMessageError, match="advertise_keys: message is not JSON"):
        SecAggParams.from_bytes(b"{")
    with pytest.raises(SecAggMessageError, match="advertise_keys: .*threshold"):
        SecAggParams.from_bytes(params.to_bytes().replace(b'"threshold": 2', b'"threshold": 9'))


def test_messages_are_json_or_raw_uint64():
    # Prepare
    params, _, clients = make_round(4, threshold=2)
    seen: list[tuple[str, bytes]] = []
    inner = local_exchange(clients, drop={"unmask": {13}})

    def recording(stage: str, messages: dict[int, bytes]) -> dict[int, bytes]:
        answers = inner(stage, messages)
        seen.extend((f"{stage} down", m) for m in messages.values())
        seen.extend((f"{stage} up", a) for a in answers.values())
        return answers

    # Execute
    result = secure_sum(params, recording)

    # Assert
    assert len(seen) == 4 + 4 + 4 + 4 + 4 + 4 + 4 + 3
    for what, data in seen:
        if what == "masked_input up":
            assert len(data) == 8 * SIZE
        else:
            assert isinstance(json.loads(data), dict), what
    assert result.bytes_up["masked_input"] == 4 * 8 * SIZE
    assert sum(result.bytes_down.values()) == sum(len(d) for w, d in seen if w.endswith("down"))
    assert sum(result.bytes_up.values()) == sum(len(d) for w, d in seen if w.endswith("up"))


def test_client_rejects_stages_out_of_order():
    # Prepare
    params = SecAggParams(clients=(1, 2), threshold=2, vector_size=3)
    client = SecAggClient(1, np.zeros(3))

    # Execute / Assert
    with pytest.raises(SecAggMessageError, match="share_keys: client 1 expects stage 'advertise_keys'"):
        client.handle("share_keys", b"{}")
    with pytest.raises(SecAggMessageError, match="unknown stage"):
        client.handle("fit", b"{}")
    client.handle(STAGES[0], params.to_bytes())
    with pytest.raises(SecAggMessageError, match="advertise_keys: client 1 expects stage 'share_keys'"):
        client.handle("advertise_keys", params.to_bytes())
    with pytest.raises(SecAggMessageError, match="share_keys: message is not JSON"):
        client.handle("share_keys", b"\x80\x04")
    with pytest.raises(ValueError, match="client 3 has 2 values, the round expects 3"):
        SecAggClient(3, np.zeros(2)).handle("advertise_keys", SecAggParams((1, 3), 2, 3).to_bytes())


def test_ciphertexts_of_one_round_cannot_be_replayed_in_another():
    # Prepare: the same key pairs in rounds 0 and 1 (the worst case: clients draw fresh ones), and
    # client 10's share ciphertexts of round 0 replayed in round 1
    keys = {c: (X25519PrivateKey.generate(), X25519PrivateKey.generate()) for c in (10, 11, 12)}

    def clients_for(params: SecAggParams) -> dict[int, SecAggClient]:
        clients = {c: SecAggClient(c, np.ones(SIZE)) for c in params.clients}
        for c, client in clients.items():
            client._c_sk, client._s_sk = keys[c]
        return clients

    round0 = SecAggParams(clients=(10, 11, 12), threshold=2, vector_size=SIZE, round_num=0)
    round1 = SecAggParams(clients=(10, 11, 12), threshold=2, vector_size=SIZE, round_num=1)
    old: dict[int, bytes] = {}

    def keep(cid: int, answer: bytes) -> bytes:
        old[cid] = answer
        return answer

    secure_sum(round0, rewriting(local_exchange(clients_for(round0)), "share_keys", keep))
    replayed: dict[int, bytes] = {}

    def replay(cid: int, answer: bytes) -> bytes:
        return old[cid] if cid == 10 else answer

    def capture(cid: int, answer: bytes) -> bytes:
        replayed[cid] = answer
        return answer

    exchange = rewriting(rewriting(local_exchange(clients_for(round1)), "share_keys", replay), "unmask", capture)

    # Execute / Assert: the old ciphertexts fail AES-GCM (round in HKDF info and associated data)
    with pytest.raises(AggregationError, match="1 shares of client 10's self-mask seed, threshold 2"):
        secure_sum(round1, exchange)
    assert json.loads(replayed[11])["undecryptable"] == [10]
    assert json.loads(replayed[12])["undecryptable"] == [10]
