import pytest
import torch

from fedumm import codec
from fedumm.config import FederationConfig
from fedumm.federation import FitReply, Server, clients_per_round, derive_seed
from fedumm.strategies import FedAvg


@pytest.mark.parametrize(
    ("fraction", "minimum", "num_clients", "expected"),
    [(1.0, 1, 4, 4), (0.5, 1, 4, 2), (0.3, 1, 10, 3), (0.1, 2, 10, 2), (0.01, 1, 10, 1), (0.5, 3, 3, 3)],
)
def test_clients_per_round(fraction, minimum, num_clients, expected):
    config = FederationConfig(num_clients=num_clients, fraction_fit=fraction, min_fit_clients=minimum)
    assert clients_per_round(config, num_clients) == expected


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


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(42, 1, 0) == derive_seed(42, 1, 0)
    assert len({derive_seed(42, r, c) for r in range(5) for c in range(5)}) == 25


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
