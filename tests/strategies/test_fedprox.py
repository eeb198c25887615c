import pytest
import torch

from fedumm.config import StrategyConfig
from fedumm.strategies import ClientUpdate, build_strategy
from fedumm.strategies.fedprox import FedProx, FedProxParams, proximal_term


def test_proximal_term_hand_computed():
    # mu/2 * ||[1,2]-[0,0]||^2 + mu/2 * ||[3]-[1]||^2 = 0.25 * (5 + 4) = 2.25 for mu = 0.5
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    anchor = {"a": torch.zeros(2), "b": torch.tensor([1.0])}
    assert proximal_term(params, anchor, mu=0.5).item() == pytest.approx(2.25)


def test_hook_gradient_is_mu_times_distance_to_global():
    # Prepare: the local parameters have drifted from the global state.
    global_state = {"w": torch.tensor([1.0, -1.0, 0.0])}
    param = torch.nn.Parameter(torch.tensor([2.0, 1.0, 0.5]))
    hooks = FedProx(FedProxParams(mu=0.1)).client_algorithm().hooks(global_state, {}, {})
    # Execute
    hooks.extra_loss({"w": param}).backward()
    # Assert: d/dθ [mu/2 ||θ-θg||²] = mu (θ-θg) = 0.1 * [1, 2, 0.5]
    assert torch.allclose(param.grad, torch.tensor([0.1, 0.2, 0.05]))


def test_local_only_tensors_are_not_pulled_towards_anything():
    hooks = FedProx(FedProxParams(mu=1.0)).client_algorithm().hooks({"w": torch.zeros(1)}, {}, {})
    loss = hooks.extra_loss({"w": torch.ones(1), "kept_local": torch.full((1,), 5.0)})
    assert loss.item() == pytest.approx(0.5)  # only w: 1/2 * 1^2


def test_server_side_is_fedavg():
    updates = [ClientUpdate(0, 1, {"w": torch.tensor([0.0])}), ClientUpdate(1, 3, {"w": torch.tensor([4.0])})]
    new = FedProx().aggregate({"w": torch.zeros(1)}, updates, 1)
    assert new["w"].item() == pytest.approx(3.0)  # (0*1 + 4*3)/4


def test_params_come_from_config():
    strategy = build_strategy(StrategyConfig(name="fedprox", mu=0.3), num_clients=2)
    assert isinstance(strategy, FedProx) and strategy.params.mu == 0.3


@pytest.mark.parametrize(("mu", "expected"), [(0.0, [0.25, -0.5]), (1.0, [0.5, -1.0])])
def test_client_round_through_client_runtime_fit(toy_fit, mu, expected):
    # Prepare: loss 0.5||w - 0||², so the gradient is w + mu (w - x) with x = w0 = [1, -2]; SGD lr 0.5, 2 steps.
    algorithm = FedProx(FedProxParams(mu=mu)).client_algorithm()
    # Execute
    trained, extras, _ = toy_fit(algorithm, [1.0, -2.0], {}, ["train.lr=0.5", "train.local_steps=2"])
    # Assert: step 1 at w = x: w1 = 0.5 w0 = [0.5, -1]. Step 2: mu = 0 -> w2 = 0.5 w1 = [0.25, -0.5];
    # mu = 1 -> gradient w1 + (w1 - w0) = [0, 0], so w2 = w1: the proximal pull cancels the loss.
    assert torch.equal(trained, torch.tensor(expected))
    assert extras == {}
