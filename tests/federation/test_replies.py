"""Every malformed reply is rejected with its reason before a strategy sees it; the others
aggregate (hand-computed), and strategy state never absorbs a rejected reply."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from safetensors.torch import save

from fedumm import codec
from fedumm.config import FederationConfig, ValidationConfig
from fedumm.federation import FitReply, Server
from fedumm.federation.replies import MAX_HEADER_BYTES, ReplyRules, check_replies, norm_bound
from fedumm.strategies import FedAdam, FedAvg
from fedumm.strategies.fedopt import FedOptParams

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
