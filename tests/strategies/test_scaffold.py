import pytest
import torch

from fedumm.strategies import ClientUpdate
from fedumm.strategies.scaffold import Scaffold, ScaffoldParams, option_ii_variate
from fedumm.train import TrainResult


def test_option_ii_variate_hand_computed():
    # c_i+ = c_i - c + (x - y)/(K lr) = [1] - [0.5] + ([2] - [1.6]) / (4 * 0.1) = 0.5 + 1.0 = 1.5
    new = option_ii_variate({"w": torch.tensor([1.0])}, {"w": torch.tensor([0.5])},
                            {"w": torch.tensor([2.0])}, {"w": torch.tensor([1.6])}, steps=4, lr=0.1)
    assert new["w"].item() == pytest.approx(1.5)


def test_gradient_correction_adds_c_minus_ci():
    client = Scaffold().client_algorithm()
    global_state = {"w": torch.zeros(2)}
    hooks = client.hooks(global_state, {"w": torch.tensor([0.5, 0.5])}, {"w": torch.tensor([0.2, -0.3])})
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([1.0, 1.0])
    hooks.after_backward({"w": param})
    # g - c_i + c = [1,1] - [0.2,-0.3] + [0.5,0.5] = [1.3, 1.8]
    assert torch.allclose(param.grad, torch.tensor([1.3, 1.8]))


def test_client_variate_starts_at_zero_and_persists_via_returned_state():
    client = Scaffold().client_algorithm()
    global_state, trained = {"w": torch.tensor([1.0])}, {"w": torch.tensor([0.0])}
    result = TrainResult(num_samples=8, steps=2, mean_loss=0.0, seconds=0.0)
    extras, state = client.finish(global_state, trained, {"w": torch.tensor([0.25])}, {}, result, lr=0.5)
    # c_i = 0 first round: c_i+ = 0 - 0.25 + (1 - 0)/(2*0.5) = 0.75; delta c = 0.75
    assert state["w"].item() == pytest.approx(0.75)
    assert extras["w"].item() == pytest.approx(0.75)
    extras2, state2 = client.finish(global_state, trained, {"w": torch.tensor([0.25])}, state, result, lr=0.5)
    # c_i = 0.75: c_i+ = 0.75 - 0.25 + 1 = 1.5; delta c = 0.75
    assert state2["w"].item() == pytest.approx(1.5) and extras2["w"].item() == pytest.approx(0.75)


def test_server_updates_model_and_control_over_two_rounds():
    strategy = Scaffold(ScaffoldParams(server_lr=0.5), num_clients=4)
    x = {"w": torch.tensor([0.0])}
    assert strategy.server_extras(x, 1)["w"].item() == 0.0
    # Round 1: Δy = [1], [3] -> mean 2 -> x = 0 + 0.5*2 = 1; Δc = [2], [4] -> c = 0 + (2/4)*3 = 1.5
    updates = [ClientUpdate(0, 10, {"w": torch.tensor([1.0])}, extras={"w": torch.tensor([2.0])}),
               ClientUpdate(1, 30, {"w": torch.tensor([3.0])}, extras={"w": torch.tensor([4.0])})]
    x = strategy.aggregate(x, updates, 1)
    assert x["w"].item() == pytest.approx(1.0)
    assert strategy.server_extras(x, 2)["w"].item() == pytest.approx(1.5)
    # Round 2, one client of 4: Δy = 3 - 1 = 2 -> x = 1 + 0.5*2 = 2; Δc = -2 -> c = 1.5 + (1/4)(-2) = 1.0
    x = strategy.aggregate(x, [ClientUpdate(2, 5, {"w": torch.tensor([3.0])}, extras={"w": torch.tensor([-2.0])})], 2)
    assert x["w"].item() == pytest.approx(2.0)
    assert strategy.control["w"].item() == pytest.approx(1.0)


def test_server_state_round_trips_through_state_dict():
    strategy = Scaffold(num_clients=2)
    strategy.control = {"w": torch.tensor([0.7])}
    restored = Scaffold(num_clients=2)
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.control["w"], torch.tensor([0.7]))
