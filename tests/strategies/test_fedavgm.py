import pytest
import torch

from fedumm.errors import AdapterStateError
from fedumm.strategies import ClientUpdate, FedAvg
from fedumm.strategies.fedavgm import FedAvgM, FedAvgMParams


def _round(strategy, global_w, clients, round_num):
    """clients: [(value of 'w', num_samples)] -> new global 'w' value."""
    updates = [ClientUpdate(i, n, {"w": torch.tensor([w])}) for i, (w, n) in enumerate(clients)]
    return strategy.aggregate({"w": torch.tensor([global_w])}, updates, round_num)["w"].item()


def test_paper_heavy_ball_momentum_over_two_rounds():
    # Prepare
    strategy = FedAvgM(FedAvgMParams(momentum=0.5, server_lr=2.0))
    # Execute / Assert round 1: Δ = (1*1 + 2*4)/3 = 3; v = 0.5*0 + 3 = 3; θ = 0 + 2*3 = 6
    assert _round(strategy, 0.0, [(1.0, 1), (4.0, 2)], 1) == pytest.approx(6.0)
    assert strategy.velocity["w"].item() == pytest.approx(3.0)
    # Round 2: Δ = 7 - 6 = 1; v = 0.5*3 + 1 = 2.5; θ = 6 + 2*2.5 = 11
    assert _round(strategy, 6.0, [(7.0, 1), (7.0, 5)], 2) == pytest.approx(11.0)
    assert strategy.velocity["w"].item() == pytest.approx(2.5)


def test_openfedllm_variant_is_an_ema_started_at_the_first_delta():
    strategy = FedAvgM(FedAvgMParams(momentum=0.5, server_lr=1.0, variant="openfedllm"))
    # Round 1: Δ = (1*1 + 2*4)/3 = 3; v = Δ = 3 (first update); θ = 0 + 3 = 3
    assert _round(strategy, 0.0, [(1.0, 1), (4.0, 2)], 1) == pytest.approx(3.0)
    # Round 2: Δ = 4 - 3 = 1; v = 0.5*3 + 0.5*1 = 2; θ = 3 + 2 = 5 (paper variant: v = 2.5, θ = 5.5)
    assert _round(strategy, 3.0, [(4.0, 1), (4.0, 1)], 2) == pytest.approx(5.0)


def test_zero_momentum_and_unit_lr_is_fedavg():
    global_state = {"w": torch.tensor([1.0, -2.0])}
    updates = [
        ClientUpdate(0, 3, {"w": torch.tensor([2.0, 0.0])}),
        ClientUpdate(1, 1, {"w": torch.tensor([-6.0, 4.0])}),
    ]
    new = FedAvgM(FedAvgMParams(momentum=0.0, server_lr=1.0)).aggregate(global_state, updates, 1)
    # FedAvg: (3*[2,0] + 1*[-6,4]) / 4 = [0, 1]
    assert torch.allclose(new["w"], torch.tensor([0.0, 1.0]))
    assert torch.allclose(new["w"], FedAvg().aggregate(global_state, updates, 1)["w"])


def test_velocity_is_created_per_key_when_first_trained():
    strategy = FedAvgM(FedAvgMParams(momentum=0.5, server_lr=1.0))
    strategy.aggregate({"a": torch.zeros(1)}, [ClientUpdate(0, 1, {"a": torch.ones(1)})], 1)  # v_a = 1
    new = strategy.aggregate(
        {"a": torch.ones(1), "b": torch.zeros(2)},
        [ClientUpdate(0, 1, {"a": torch.ones(1), "b": torch.full((2,), 2.0)})],
        2,
    )
    # a: Δ = 0, v = 0.5*1 + 0 = 0.5, θ = 1.5;  b: first update, v = Δ = 2, θ = 2
    assert new["a"].item() == pytest.approx(1.5)
    assert torch.allclose(new["b"], torch.tensor([2.0, 2.0]))


def test_state_dict_round_trip_continues_identically():
    from safetensors.torch import load, save

    # Prepare: one round, then checkpoint the server state through safetensors bytes.
    first = FedAvgM(FedAvgMParams(momentum=0.9, server_lr=0.5))
    _round(first, 0.0, [(1.0, 1), (3.0, 1)], 1)  # Δ = 2, v = 2, θ = 1
    restored = FedAvgM(FedAvgMParams(momentum=0.9, server_lr=0.5))
    restored.load_state_dict(load(save(first.state_dict())))
    assert set(first.state_dict()) == {"momentum/w"}
    # Execute: the same round 2 on both. Δ = 2 - 1 = 1; v = 0.9*2 + 1 = 2.8; θ = 1 + 0.5*2.8 = 2.4
    assert _round(first, 1.0, [(2.0, 1)], 2) == pytest.approx(2.4)
    assert _round(restored, 1.0, [(2.0, 1)], 2) == pytest.approx(2.4)


def test_load_rejects_foreign_keys_and_mismatched_shapes():
    strategy = FedAvgM()
    with pytest.raises(ValueError, match="unexpected server state key 'control/w'"):
        strategy.load_state_dict({"control/w": torch.zeros(1)})
    strategy.load_state_dict({"momentum/w": torch.zeros(3)})
    with pytest.raises(AdapterStateError, match="shape mismatch for 'w'"):
        strategy.aggregate({"w": torch.zeros(2)}, [ClientUpdate(0, 1, {"w": torch.ones(2)})], 1)


def test_keeps_global_dtype():
    new = FedAvgM().aggregate(
        {"w": torch.zeros(2, dtype=torch.float16)},
        [ClientUpdate(0, 1, {"w": torch.full((2,), 0.1, dtype=torch.float16)})],
        1,
    )
    assert new["w"].dtype == torch.float16
    assert new["w"][0].item() == pytest.approx(0.1, abs=1e-3)
