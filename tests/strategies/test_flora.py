"""FLoRA (stacking) and FFA-LoRA (frozen A + FedAvg of B) against the average of the products,
on hand-built factors where averaging A and B separately is wrong."""

import pytest
import torch

from fedumm.strategies import ClientUpdate, FedAvg, FLoRA

M = "layers.0.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"


def _updates():
    # Client 0 of rank 1 and client 1 of rank 2 (R = 2), one sample each.
    # B0 A0 = [[1, 0], [1, 0]],  B1 A1 = [[0, 2], [1, 0]];  mean of the products = [[0.5, 1], [1, 0]].
    c0 = {A: torch.tensor([[1.0, 0.0]]), B: torch.tensor([[1.0], [1.0]])}
    c1 = {A: torch.tensor([[0.0, 2.0], [1.0, 0.0]]), B: torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    return [ClientUpdate(0, 1, c0), ClientUpdate(1, 1, c1)]


MEAN_PRODUCT = torch.tensor([[0.5, 1.0], [1.0, 0.0]])


def _global():
    return {A: torch.tensor([[0.3, -0.2], [0.1, 0.4]]), B: torch.zeros(2, 2)}


def test_averaging_a_and_b_separately_is_not_the_average_of_the_products():
    # Zero-pad client 0 to rank 2 and average each factor on its own.
    a0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    u = _updates()[1].state
    separate = ((b0 + u[B]) / 2) @ ((a0 + u[A]) / 2)
    # By hand: [[1, 0], [.5, .5]] @ [[.5, 1], [.5, 0]] = [[.5, 1], [.5, .5]].
    assert torch.allclose(separate, torch.tensor([[0.5, 1.0], [0.5, 0.5]]))
    assert (separate - MEAN_PRODUCT).abs().max().item() == pytest.approx(0.5)


def test_flora_stacking_recovers_the_average_of_the_products_exactly():
    strategy = FLoRA()
    new = strategy.aggregate(_global(), _updates(), round_num=1)
    assert (strategy.frozen_delta()[M] - MEAN_PRODUCT).abs().max().item() <= 1e-6
    # The local LoRA restarts: A stays the (seeded) global A, B goes back to zero.
    assert torch.equal(new[A], _global()[A])
    assert torch.count_nonzero(new[B]) == 0


def test_flora_weights_by_samples_and_accumulates_over_rounds():
    strategy = FLoRA()
    strategy.aggregate(_global(), _updates(), round_num=1)
    u0, u1 = _updates()
    weighted = [ClientUpdate(0, 3, u0.state), ClientUpdate(1, 1, u1.state)]
    strategy.aggregate(_global(), weighted, round_num=2)
    # Round 2 adds 3/4 B0 A0 + 1/4 B1 A1 = [[.75, .5], [1, 0]].
    expected = MEAN_PRODUCT + torch.tensor([[0.75, 0.5], [1.0, 0.0]])
    assert (strategy.frozen_delta()[M] - expected).abs().max().item() <= 1e-6


def test_flora_server_state_round_trips_and_is_checked():
    strategy = FLoRA()
    strategy.aggregate(_global(), _updates(), round_num=1)
    saved = strategy.state_dict()
    assert set(saved) == {f"flora_delta/{M}"}
    restored = FLoRA()
    restored.load_state_dict(saved, reference=_global())
    assert torch.equal(restored.frozen_delta()[M], strategy.frozen_delta()[M])
    with pytest.raises(ValueError, match=r"has shape \(3, 2\), expected \(2, 2\)"):
        FLoRA().load_state_dict({f"flora_delta/{M}": torch.zeros(3, 2)}, reference=_global())
    with pytest.raises(ValueError, match="not a LoRA module"):
        FLoRA().load_state_dict({"flora_delta/other": torch.zeros(2, 2)}, reference=_global())
    with pytest.raises(ValueError, match="unexpected server state key"):
        FLoRA().load_state_dict({"control/x": torch.zeros(1)})


def test_ffa_lora_fedavg_of_b_with_a_frozen_is_the_average_of_the_products():
    # FFA-LoRA: every client shares the seeded A; only B trains and travels.
    shared_a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b0, b1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    updates = [ClientUpdate(0, 1, {B: b0}), ClientUpdate(1, 3, {B: b1})]
    new = FedAvg().aggregate({B: torch.zeros(2, 2)}, updates, round_num=1)
    expected = 0.25 * (b0 @ shared_a) + 0.75 * (b1 @ shared_a)
    # By hand: 0.25 [[1, 2], [0, 0]] + 0.75 [[0, 0], [5, 8]] = [[.25, .5], [3.75, 6]].
    assert torch.allclose(expected, torch.tensor([[0.25, 0.5], [3.75, 6.0]]))
    assert (new[B] @ shared_a - expected).abs().max().item() <= 1e-6
