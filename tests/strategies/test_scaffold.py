import pytest
import torch

from fedumm.errors import AdapterStateError
from fedumm.strategies import ClientUpdate
from fedumm.strategies.scaffold import Scaffold, ScaffoldParams, option_ii_variate
from fedumm.types import TrainResult


def _client(correction="parameter"):
    return Scaffold(ScaffoldParams(correction=correction)).client_algorithm()


def test_option_ii_variate_hand_computed():
    # c_i+ = c_i - c + (x - y)/(K lr) = [1] - [0.5] + ([2] - [1.6]) / (4 * 0.1) = 0.5 + 1.0 = 1.5
    new = option_ii_variate(
        {"w": torch.tensor([1.0])},
        {"w": torch.tensor([0.5])},
        {"w": torch.tensor([2.0])},
        {"w": torch.tensor([1.6])},
        steps=4,
        lr=0.1,
    )
    assert new["w"].item() == pytest.approx(1.5)


def test_gradient_correction_adds_c_minus_ci():
    hooks = _client("gradient").hooks(
        {"w": torch.zeros(2)}, {"w": torch.tensor([0.5, 0.5])}, {"w": torch.tensor([0.2, -0.3])}
    )
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([1.0, 1.0])
    hooks.after_backward({"w": param})
    hooks.after_step({"w": param}, lr=0.1)  # the gradient form leaves the step alone
    # g - c_i + c = [1,1] - [0.2,-0.3] + [0.5,0.5] = [1.3, 1.8]
    assert torch.allclose(param.grad, torch.tensor([1.3, 1.8]))
    assert torch.equal(param.detach(), torch.zeros(2))


def test_parameter_correction_moves_the_step_by_lr_times_c_minus_ci():
    hooks = _client().hooks({"w": torch.zeros(2)}, {"w": torch.tensor([0.5, 0.5])}, {"w": torch.tensor([0.25, -0.5])})
    param = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    param.grad = torch.tensor([3.0, 3.0])
    hooks.after_backward({"w": param})  # gradients stay as they are
    assert torch.equal(param.grad, torch.tensor([3.0, 3.0]))
    # Execute: θ <- θ - lr (c - c_i) = [1, 1] - 0.5 * [0.25, 1.0]
    hooks.after_step({"w": param}, lr=0.5)
    assert torch.equal(param.detach(), torch.tensor([0.875, 0.5]))


@pytest.mark.parametrize("correction", ["parameter", "gradient"])
def test_local_round_under_sgd_is_the_papers_corrected_step(toy_fit, correction):
    # Prepare: loss 0.5||w||² (gradient w), w0 = x = [1, -2], c = [0.5, 0], c_i = [0, -0.25]
    # -> c - c_i = [0.5, 0.25]; SGD, lr 0.5, K = 2 steps, no clipping.
    # Execute
    trained, delta_c, runtime = toy_fit(
        _client(correction),
        [1.0, -2.0],
        {"w": [0.5, 0.0]},
        ["train.lr=0.5", "train.local_steps=2"],
        client_state={"w": torch.tensor([0.0, -0.25])},
    )
    # Assert: w <- w - 0.5 (w + [0.5, 0.25]) = 0.5 w - [0.25, 0.125] in both forms:
    # w1 = [0.25, -1.125], w2 = [-0.125, -0.6875]
    assert torch.equal(trained, torch.tensor([-0.125, -0.6875]))
    # Option II: c_i+ = c_i - c + (x - y)/(K lr) = [-0.5, -0.25] + [1.125, -1.3125] = [0.625, -1.5625],
    # which is the mean raw gradient (w0 + w1)/2, as the paper intends; Δc = c_i+ - c_i.
    assert torch.equal(runtime.client_state["w"], torch.tensor([0.625, -1.5625]))
    assert torch.equal(delta_c["w"], torch.tensor([0.625, -1.3125]))


def test_client_variate_starts_at_zero_and_persists_via_returned_state():
    client = _client()
    global_state, trained = {"w": torch.tensor([1.0])}, {"w": torch.tensor([0.0])}
    result = TrainResult(num_samples=8, steps=2, mean_loss=0.0, seconds=0.0)
    extras, state = client.finish(global_state, trained, {"w": torch.tensor([0.25])}, {}, result, lr=0.5)
    # c_i = 0 first round: c_i+ = 0 - 0.25 + (1 - 0)/(2*0.5) = 0.75; delta c = 0.75
    assert state["w"].item() == pytest.approx(0.75)
    assert extras["w"].item() == pytest.approx(0.75)
    extras2, state2 = client.finish(global_state, trained, {"w": torch.tensor([0.25])}, state, result, lr=0.5)
    # c_i = 0.75: c_i+ = 0.75 - 0.25 + 1 = 1.5; delta c = 0.75
    assert state2["w"].item() == pytest.approx(1.5) and extras2["w"].item() == pytest.approx(0.75)


def test_variates_of_keys_not_trained_this_round_are_kept():
    # two_stage: round 1 trained the connector ("conn"), this round trains LoRA ("w") only.
    result = TrainResult(num_samples=1, steps=1, mean_loss=0.0, seconds=0.0)
    kept = {"conn": torch.tensor([7.0])}
    extras, state = _client().finish(
        {"w": torch.tensor([1.0])},
        {"w": torch.tensor([0.5])},
        {"w": torch.tensor([0.0]), "conn": torch.tensor([1.0])},
        kept,
        result,
        lr=1.0,
    )
    assert set(extras) == {"w"}
    assert state["conn"].item() == 7.0 and state["w"].item() == pytest.approx(0.5)  # 0 - 0 + 0.5 / 1


def test_server_updates_model_and_control_over_two_rounds():
    strategy = Scaffold(ScaffoldParams(server_lr=0.5), num_clients=4)
    x = {"w": torch.tensor([0.0])}
    assert strategy.server_extras(x, 1)["w"].item() == 0.0
    # Round 1: Δy = [1], [3] -> mean 2 -> x = 0 + 0.5*2 = 1; Δc = [2], [4] -> c = 0 + (2/4)*3 = 1.5
    updates = [
        ClientUpdate(0, 10, {"w": torch.tensor([1.0])}, extras={"w": torch.tensor([2.0])}),
        ClientUpdate(1, 30, {"w": torch.tensor([3.0])}, extras={"w": torch.tensor([4.0])}),
    ]
    x = strategy.aggregate(x, updates, 1)
    assert x["w"].item() == pytest.approx(1.0)
    assert strategy.server_extras(x, 2)["w"].item() == pytest.approx(1.5)
    # Round 2, one client of 4: Δy = 3 - 1 = 2 -> x = 1 + 0.5*2 = 2; Δc = -2 -> c = 1.5 + (1/4)(-2) = 1.0
    x = strategy.aggregate(x, [ClientUpdate(2, 5, {"w": torch.tensor([3.0])}, extras={"w": torch.tensor([-2.0])})], 2)
    assert x["w"].item() == pytest.approx(2.0)
    assert strategy.control["w"].item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("extras", "fragment"),
    [
        ({}, "client 1 delta c .* 1 missing key"),
        ({"w": torch.zeros(3)}, "client 1 delta c .* shape mismatch for 'w'"),
        ({"w": torch.zeros(2), "other": torch.zeros(1)}, "client 1 delta c .* 1 unexpected key"),
    ],
)
def test_missing_or_mismatched_client_extras_are_clear_errors(extras, fragment):
    updates = [
        ClientUpdate(0, 1, {"w": torch.ones(2)}, extras={"w": torch.zeros(2)}),
        ClientUpdate(1, 1, {"w": torch.ones(2)}, extras=extras),
    ]
    with pytest.raises(AdapterStateError, match=fragment):
        Scaffold(num_clients=2).aggregate({"w": torch.zeros(2)}, updates, 1)


def test_client_without_the_servers_variate_is_a_clear_error():
    with pytest.raises(AdapterStateError, match="control variate c does not match.*1 missing key"):
        _client().hooks({"w": torch.zeros(2)}, {}, {})


def test_server_state_round_trips_through_state_dict():
    strategy = Scaffold(num_clients=2)
    strategy.control = {"w": torch.tensor([0.7])}
    restored = Scaffold(num_clients=2)
    restored.load_state_dict(strategy.state_dict(), reference={"w": torch.zeros(1)})
    assert torch.equal(restored.control["w"], torch.tensor([0.7]))


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"momentum/w": torch.zeros(1)}, "unexpected server state key 'momentum/w'"),
        ({"control/v": torch.zeros(1)}, "key 'v' is not a tensor of the global adapter"),
        ({"control/w": torch.zeros(2)}, "shape mismatch for 'w'"),
    ],
)
def test_load_state_dict_rejects_foreign_keys_and_shapes(state, fragment):
    with pytest.raises(ValueError, match=fragment):
        Scaffold().load_state_dict(state, reference={"w": torch.zeros(1)})
