"""Every malformed reply is rejected with its reason before a strategy sees it; the others
aggregate (hand-computed), and strategy state never absorbs a rejected reply."""

from __future__ import annotations

import json
import pickle
import re
import struct
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save

from fedumm import codec
from fedumm.compression import build_codec, encode_delta, layout_digest
from fedumm.config import FederationConfig, ValidationConfig
from fedumm.federation import FitReply, Server
from fedumm.federation.replies import MAX_HEADER_BYTES, ReplyRules, check_replies, norm_bound
from fedumm.strategies import FedAdam, FedAvg
from fedumm.strategies.fedopt import FedOptParams
from fedumm.types import DTYPES

GLOBAL = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
RULES = ReplyRules({"a": (2, 3), "b": (4,)}, {0: 10, 1: 10, 2: 10}, "local_vqa_accuracy", True)


def good(cid: int, value: float = 1.0, samples: int = 5, **metrics) -> FitReply:
    state = {"a": torch.full((2, 3), value), "b": torch.full((4,), value)}
    return FitReply(cid, codec.encode_message({"state": state, "extras": {}}), samples, dict(metrics))


def raw(tensors: dict[str, torch.Tensor], parts: str = "state,extras") -> bytes:
    return save(tensors, metadata={"fedumm_parts": parts, "fedumm_wire_dtype": "float32"})


def with_header(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


BAD = {
    "nan": (lambda: good(0, float("nan")), r"non-finite values"),
    "inf": (lambda: good(0, float("inf")), r"non-finite values"),
    "wrong shape": (
        lambda: FitReply(0, raw({"state/a": torch.zeros(3, 2), "state/b": torch.zeros(4)}), 5),
        r"shape \(3, 2\), expected \(2, 3\)",
    ),
    "missing key": (lambda: FitReply(0, raw({"state/a": torch.zeros(2, 3)}), 5), r"lacks 1 tensor.*'b'"),
    "extra key": (
        lambda: FitReply(0, raw({**{f"state/{k}": v for k, v in GLOBAL.items()}, "state/c": torch.zeros(1)}), 5),
        r"unexpected tensor 'state/c'",
    ),
    "no state part": (
        lambda: FitReply(0, raw({"extras/a": torch.zeros(2, 3)}, parts="extras"), 5),
        r"message parts \['extras'\]",
    ),
    "float64": (
        lambda: FitReply(0, raw({"state/a": torch.zeros(2, 3, dtype=torch.float64), "state/b": torch.zeros(4)}), 5),
        r"dtype F64, not a floating wire dtype",
    ),
    "int64": (
        lambda: FitReply(0, raw({"state/a": torch.zeros(2, 3, dtype=torch.int64), "state/b": torch.zeros(4)}), 5),
        r"dtype I64",
    ),
    "not bytes": (lambda: FitReply(0, "hello", 5), r"not a safetensors message"),
    "huge header": (lambda: FitReply(0, struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", 5), r"over its limit"),
    "header not json": (lambda: FitReply(0, struct.pack("<Q", 4) + b"\xff\xfe{{", 5), r"not JSON"),
    "short data": (
        lambda: FitReply(0, raw({f"state/{k}": v for k, v in GLOBAL.items()})[:-8], 5),
        r"length does not match|not a valid safetensors",
    ),
    "offsets lie": (
        lambda: FitReply(
            0,
            with_header(
                {
                    "__metadata__": {"fedumm_parts": "state"},
                    "state/a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 4]},
                },
                b"\0" * 4,
            ),
            5,
        ),
        r"byte range that does not fit",
    ),
    "malformed entry": (
        lambda: FitReply(
            0, with_header({"__metadata__": {"fedumm_parts": "state"}, "state/a": {"dtype": "F32", "shape": "x"}}), 5
        ),
        r"shape|malformed",
    ),
    "zero samples": (lambda: good(0, samples=0), r"sample count 0 is not an integer in \[1, 10\]"),
    "inflated samples": (lambda: good(0, samples=1_000_000_000), r"sample count 1000000000"),
    "float samples": (lambda: good(0, samples=2.5), r"sample count 2.5"),
    "bool samples": (lambda: good(0, samples=True), r"sample count True"),
    "score above 1": (lambda: good(0, local_vqa_accuracy=1e9), r"local_vqa_accuracy 1000000000.0 is outside"),
    "negative score": (lambda: good(0, local_vqa_accuracy=-0.5), r"outside"),
    "nan metric": (lambda: good(0, train_loss=float("nan")), r"metrics are not finite numbers"),
    "text metric": (lambda: good(0, train_loss="low"), r"metrics are not finite numbers"),
    "failed client": (
        lambda: FitReply(0, b"", 0, error="round 1 client 0: the training loss became nan"),
        r"client failed: round 1 client 0",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_malformed_reply_is_rejected_with_its_reason_and_the_round_goes_on(kind):
    make, reason = BAD[kind]
    # Execute: the bad reply from client 0 next to two good ones
    updates, rejected = check_replies([make(), good(1, 1.0, 1), good(2, 4.0, 2)], RULES, GLOBAL, ValidationConfig())
    # Assert
    assert list(rejected) == [0]
    assert re.search(reason, rejected[0]), rejected[0]  # the reason metrics.jsonl records
    assert [u.client_id for u in updates] == [1, 2]


def test_server_aggregates_the_valid_replies_only():
    server = Server(FedAvg(), GLOBAL, FederationConfig(num_clients=3), seed=0)
    updates, rejected = server.check([good(0, float("nan")), good(1, 1.0, 1), good(2, 4.0, 2)], RULES)
    assert server.aggregate_updates(updates, 1)
    assert list(rejected) == [0]
    assert torch.allclose(server.global_state["a"], torch.full((2, 3), 3.0))  # (1*1 + 2*4) / 3 = 3


def test_a_second_reply_from_one_client_is_rejected():
    updates, rejected = check_replies([good(1, 1.0), good(1, 9.0)], RULES, GLOBAL, ValidationConfig())
    assert [u.state["b"][0].item() for u in updates] == [1.0]
    assert rejected == {1: "a second reply in the same round"}


def test_rejected_replies_never_reach_fedadam_moments():
    server = Server(FedAdam(FedOptParams()), GLOBAL, FederationConfig(num_clients=3), seed=0)
    updates, _ = server.check([good(0, float("inf")), good(1, 1.0)], RULES)
    server.aggregate_updates(updates, 1)
    moments = server.strategy.state_dict()
    assert moments and all(bool(torch.isfinite(t).all()) for t in moments.values())


@pytest.mark.parametrize(
    ("setting", "norms", "bound"),
    [(None, [1.0, 2.0], None), (5.0, [1.0, 2.0], 5.0), ("auto", [1.0, 2.0, 10.0], 6.0), ("auto", [1.0, 3.0], 6.0)],
)
def test_norm_bound_is_the_number_or_k_times_the_median(setting, norms, bound):
    assert norm_bound(norms, ValidationConfig(max_update_norm=setting, auto_norm_factor=3.0)) == bound


def test_auto_norm_bound_rejects_a_scaled_update():
    # Updates of norm sqrt(10) * v: clients 1..3 at v = 1, 1, 2; client 0 scaled to 1e6.
    replies = [good(0, 1e6), good(1, 1.0), good(2, 1.0), good(3, 2.0)]
    rules = ReplyRules(RULES.shapes, {c: 10 for c in range(4)}, "", True)
    updates, rejected = check_replies(replies, rules, GLOBAL, ValidationConfig(max_update_norm="auto"))
    assert [u.client_id for u in updates] == [1, 2, 3]
    assert rejected[0].startswith("update norm 3.162e+06 is above the bound")


# ---------------------------------------------------------------- heterogeneous LoRA ranks

_A, _B = "m.lora_A.weight", "m.lora_B.weight"


def _ranked_rules():
    # Global rank 4; client 0 may reply at rank 2 to 4 (HetLoRA pruning), client 1 at exactly 2.
    return ReplyRules({_A: (4, 3), _B: (5, 4)}, {}, "", True, {0: (2, 4), 1: (2, 2)})


def _ranked(cid, a_rank, b_rank=None):
    state = {_A: torch.ones(a_rank, 3), _B: torch.ones(5, b_rank or a_rank)}
    return FitReply(cid, codec.encode_message({"state": state}), 1)


def test_replies_at_a_clients_own_rank_pass_and_others_are_rejected():
    global_state = {_A: torch.zeros(4, 3), _B: torch.zeros(5, 4)}
    replies = [_ranked(0, 3), _ranked(1, 3), _ranked(1, 2, 1)]
    updates, rejected = check_replies(replies[:2], _ranked_rules(), global_state, ValidationConfig())
    assert [u.client_id for u in updates] == [0]
    assert rejected == {1: "LoRA rank 3 is outside [2, 2] for this client (adapter.client_ranks)"}
    _, rejected = check_replies(replies[2:], _ranked_rules(), global_state, ValidationConfig())
    assert "different ranks" in rejected[1]


def test_update_norm_of_a_lower_rank_reply_is_against_the_global_cut_to_its_rank():
    global_state = {_A: torch.ones(4, 3), _B: torch.ones(5, 4)}
    reply = FitReply(0, codec.encode_message({"state": {_A: torch.full((2, 3), 2.0), _B: torch.ones(5, 2)}}), 1)
    config = ValidationConfig(max_update_norm=2.5)
    # ||theta - global[:2]|| = ||ones(2, 3)|| = sqrt 6 = 2.449 <= 2.5: accepted.
    updates, rejected = check_replies([reply], _ranked_rules(), global_state, config)
    assert [u.client_id for u in updates] == [0] and not rejected
    updates, rejected = check_replies([reply], _ranked_rules(), global_state, ValidationConfig(max_update_norm=2.4))
    assert not updates and "update norm 2.449" in rejected[0]


# Compressed replies (federation.compression): the delta's fields are checked as strictly.

INT8_RULES = ReplyRules(
    {"a": (2, 3), "b": (4,)},
    {0: 10, 1: 10, 2: 10},
    "local_vqa_accuracy",
    True,
    compression=build_codec("int8"),
    wire_dtype="float32",
)


def delta_fields(
    name: str = "int8", value: float = 0.9921875, wire: torch.dtype = torch.float32, fraction: float = 0.5
):
    delta = {"a": torch.full((2, 3), value), "b": torch.full((4,), value)}
    return encode_delta(delta, build_codec(name, fraction), wire, seed=0)


def compressed(cid: int, fields: dict, name: str = "int8", shapes=None, parts: str = "delta,extras") -> FitReply:
    meta = {
        "fedumm_parts": parts,
        "fedumm_codec": name,
        "fedumm_layout": layout_digest(shapes or INT8_RULES.shapes),
    }
    return FitReply(cid, save({f"delta/{k}": v for k, v in fields.items()}, metadata=meta), 5)


PARTS_ONLY = {"fedumm_parts": "delta"}


def _with(field: str, tensor: torch.Tensor) -> dict:
    return {**delta_fields(), field: tensor}


BAD_COMPRESSED = {
    "codes int16": (
        lambda: compressed(0, _with("codes", torch.zeros(10, dtype=torch.int16))),
        r"dtype I16, expected I8",
    ),
    "scales float16 on a float32 wire": (
        lambda: compressed(0, _with("scales", torch.ones(3, dtype=torch.float16))),
        r"'delta/scales' has dtype F16, expected BF16 \(int8 with federation.wire_dtype float32\)",
    ),
    "scales float64": (lambda: compressed(0, _with("scales", torch.ones(3, dtype=torch.float64))), r"dtype F64"),
    "one scale too many": (
        lambda: compressed(0, _with("scales", torch.ones(4, dtype=torch.bfloat16))),
        r"shape \(4,\), expected \(3,\)",
    ),
    "codes as a matrix": (
        lambda: compressed(0, _with("codes", torch.zeros(2, 5, dtype=torch.int8))),
        r"'delta/codes' has shape \(2, 5\), expected \(10,\)",
    ),
    "code -128": (
        lambda: compressed(0, _with("codes", torch.full((10,), -128, dtype=torch.int8))),
        r"tensor 'a': an int8 code is outside \[-127, 127\]",
    ),
    "nan scale": (
        lambda: compressed(0, _with("scales", torch.tensor([0.01, 0.01, float("nan")], dtype=torch.bfloat16))),
        r"tensor 'b': a scale is not finite",
    ),
    "scale overflows the state": (
        lambda: compressed(0, _with("scales", torch.full((3,), 3e38, dtype=torch.bfloat16))),
        r"non-finite values",
    ),
    "missing scales": (
        lambda: compressed(0, {"codes": delta_fields()["codes"]}),
        r"delta lacks 1 int8 field\(s\), e.g. 'scales'",
    ),
    "extra field": (lambda: compressed(0, _with("values", torch.zeros(2))), r"unexpected tensor 'delta/values'"),
    "truncated payload": (
        lambda: FitReply(0, compressed(0, delta_fields()).payload[:-3], 5),
        r"payload length does not match its header",
    ),
    "another codec": (lambda: compressed(0, delta_fields("int4"), "int4"), r"payload codec 'int4', expected 'int8'"),
    "no codec named": (
        lambda: FitReply(
            0, save({f"delta/{k}": v for k, v in delta_fields().items()}, metadata={"fedumm_parts": "delta"}), 5
        ),
        r"payload codec None, expected 'int8'",
    ),
    "other tensors": (
        lambda: compressed(0, delta_fields(), shapes={"a": (3, 2), "b": (4,)}),
        r"encoded for other tensors than this round's",
    ),
    "a plain state": (lambda: good(0), r"message parts \['state', 'extras'\] \(expected delta and optionally extras\)"),
    "pickle": (lambda: FitReply(0, pickle.dumps({"a": torch.zeros(2, 3)}), 5), r"over its limit or the payload"),
}


@pytest.mark.parametrize("kind", sorted(BAD_COMPRESSED))
def test_each_malformed_compressed_reply_is_rejected_with_its_reason_and_the_round_goes_on(kind):
    make, reason = BAD_COMPRESSED[kind]
    # Execute: the bad reply from client 0 next to two good ones.
    good_one, good_two = compressed(1, delta_fields(value=1.27)), compressed(2, delta_fields(value=-0.254))
    updates, rejected = check_replies([make(), good_one, good_two], INT8_RULES, GLOBAL, ValidationConfig())
    # Assert
    assert list(rejected) == [0]
    assert re.search(reason, rejected[0]), rejected[0]
    assert [u.client_id for u in updates] == [1, 2]


def test_a_compressed_reply_becomes_global_plus_its_decoded_delta():
    # Prepare: global 0.5 everywhere; deltas 127/128 (s = 1/128, exact in bfloat16; code 127) in every tensor.
    global_state = {"a": torch.full((2, 3), 0.5), "b": torch.full((4,), 0.5)}
    # Execute
    updates, rejected = check_replies([compressed(0, delta_fields())], INT8_RULES, global_state, ValidationConfig())
    # Assert: the strategy sees the rebuilt state 0.5 + 0.9921875, exactly.
    assert rejected == {}
    assert updates[0].state["a"].tolist() == [[1.4921875] * 3] * 2
    assert updates[0].state["b"].tolist() == [1.4921875] * 4


@pytest.mark.parametrize(
    ("name", "wire", "dtypes"),
    [("int4", "bfloat16", ("U8", "BF16")), ("topk", "float16", ("F16", "I16"))],
)
def test_int4_and_topk_replies_pass_in_their_own_dtypes(name, wire, dtypes):
    rules = replace(INT8_RULES, compression=build_codec(name, 0.5), wire_dtype=wire)
    fields = delta_fields(name, value=0.7, wire=DTYPES[wire])
    reply = compressed(0, fields, name)
    header = json.loads(reply.payload[8 : 8 + struct.unpack("<Q", reply.payload[:8])[0]])
    assert sorted(header[f"delta/{f}"]["dtype"] for f in fields) == sorted(dtypes)
    updates, rejected = check_replies([reply], rules, GLOBAL, ValidationConfig())
    assert rejected == {}
    # int4: 0.7 with s = 0.1 is exact; topk 0.5 of 6 and 4 entries: 3 and 2 of them are 0.7.
    kept = [float((updates[0].state[k] != 0).sum()) for k in ("a", "b")]
    assert kept == ([6.0, 4.0] if name == "int4" else [3.0, 2.0])
    assert all(torch.allclose(v[v != 0], torch.tensor(0.7), atol=1e-3) for v in updates[0].state.values())


@pytest.mark.parametrize(
    ("indices", "reason"),
    [([0, 1, 6, 0, 1], r"tensor 'a': a topk index is outside \[0, 6\)"), ([0, 0, 1, 0, 1], r"strictly increasing")],
)
def test_topk_indices_out_of_range_or_repeated_are_rejected(indices, reason):
    rules = replace(INT8_RULES, compression=build_codec("topk", 0.5))
    fields = {**delta_fields("topk"), "indices": torch.tensor(indices, dtype=torch.int16)}
    _, rejected = check_replies([compressed(0, fields, "topk")], rules, GLOBAL, ValidationConfig())
    assert re.search(reason, rejected[0]), rejected[0]


def test_topk_indices_wider_than_needed_are_rejected():
    rules = replace(INT8_RULES, compression=build_codec("topk", 0.5))
    fields = {**delta_fields("topk"), "indices": delta_fields("topk")["indices"].to(torch.int64)}
    _, rejected = check_replies([compressed(0, fields, "topk")], rules, GLOBAL, ValidationConfig())
    assert re.search(r"dtype I64, expected I16", rejected[0]), rejected[0]
