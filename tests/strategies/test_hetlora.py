"""HetLoRA: zero-padding aggregation (sample and sparsity weights), the tail-norm regulariser and
rank self-pruning, the server's record of pruned ranks, on hand-built factors."""

import math

import pytest
import torch

from fedumm.strategies import ClientUpdate, HetLoRA
from fedumm.strategies.hetlora import HetLoRAClient, pruned_rank, tail_norm

M = "layers.0.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"


def _updates():
    # Client 0: rank 1, 1 sample; client 1: rank 2, 3 samples (R = 2).
    c0 = {A: torch.tensor([[1.0, 2.0]]), B: torch.tensor([[1.0], [0.0]]), "proj.bias": torch.tensor([4.0])}
    c1 = {
        A: torch.tensor([[3.0, 0.0], [0.0, 4.0]]),
        B: torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        "proj.bias": torch.tensor([8.0]),
    }
    return [ClientUpdate(0, 1, c0), ClientUpdate(1, 3, c1)]


def _global():
    return {A: torch.zeros(2, 2), B: torch.zeros(2, 2), "proj.bias": torch.zeros(1)}


def _strategy(**params):
    strategy = HetLoRA(HetLoRA.Params(**params), num_clients=2)
    strategy.set_client_ranks({0: 1, 1: 2})
    return strategy


def test_zero_padding_with_sample_weights():
    new = _strategy(weighting="samples").aggregate(_global(), _updates(), round_num=1)
    # A = 1/4 [[1, 2], [0, 0]] + 3/4 [[3, 0], [0, 4]] = [[2.5, .5], [0, 3]]
    # B = 1/4 [[1, 0], [0, 0]] + 3/4 [[2, 0], [0, 1]] = [[1.75, 0], [0, .75]]
    assert torch.allclose(new[A], torch.tensor([[2.5, 0.5], [0.0, 3.0]]))
    assert torch.allclose(new[B], torch.tensor([[1.75, 0.0], [0.0, 0.75]]))
    assert torch.allclose(new["proj.bias"], torch.tensor([7.0]))  # (4 + 3 * 8) / 4


def test_zero_padding_with_sparsity_weights():
    new = _strategy(weighting="sparsity").aggregate(_global(), _updates(), round_num=1)
    # ||B0 A0||_F = ||[[1, 2], [0, 0]]|| = sqrt 5;  ||B1 A1||_F = ||[[6, 0], [0, 4]]|| = sqrt 52.
    p0 = math.sqrt(5) / (math.sqrt(5) + math.sqrt(52))
    p1 = 1 - p0
    expected_a = p0 * torch.tensor([[1.0, 2.0], [0.0, 0.0]]) + p1 * torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert torch.allclose(new[A], expected_a, atol=1e-6)
    assert new[A][0, 1].item() == pytest.approx(2 * p0, abs=1e-6)
    # Non-factor tensors keep the sample weights.
    assert torch.allclose(new["proj.bias"], torch.tensor([7.0]))


def _factors(tail_b: torch.Tensor) -> dict[str, torch.Tensor]:
    # Rank 4; components 2 and 3 (the tail at decay 0.5) have A rows e1, e2 and B columns tail_b.
    a = torch.zeros(4, 2)
    a[0, 0], a[1, 1], a[2, 0], a[3, 1] = 1.0, 1.0, 1.0, 1.0
    b = torch.zeros(2, 4)
    b[:, :2] = torch.tensor([[7.0, 0.0], [0.0, 7.0]])
    b[:, 2:] = tail_b
    return {A: a, B: b}


def test_tail_norm_and_pruned_rank_by_hand():
    factors = _factors(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    # B_T A_T = [[3, 0], [0, 4]]: Frobenius norm 5; the head (7 I) does not count.
    assert tail_norm(factors, [M], 2, 4).item() == pytest.approx(5.0, abs=1e-5)
    assert pruned_rank(4, 0.5, 1) == 2
    assert pruned_rank(16, 0.9, 1) == 14  # floor(14.4)
    assert pruned_rank(4, 0.5, 3) == 3  # the floor min_rank
    assert pruned_rank(1, 0.5, 1) == 1


def test_a_client_prunes_when_its_tail_shrank_and_not_otherwise():
    client = HetLoRAClient(decay=0.5, reg=0.1, min_rank=1, prune=True)
    received = _factors(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # tail norm 5
    # The regulariser adds reg x the tail norm to the local loss: 0.1 x 5.
    hooks = client.hooks(received, {}, {})
    assert hooks.extra_loss(received).item() == pytest.approx(0.5, abs=1e-5)
    shrunk = _factors(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # tail norm sqrt 2 < 5
    reply = client.reply_state(received, shrunk)
    assert reply[A].shape == (2, 2) and reply[B].shape == (2, 2)
    assert torch.equal(reply[B], shrunk[B][:, :2])
    grown = _factors(torch.tensor([[6.0, 0.0], [0.0, 8.0]]))  # tail norm 10 > 5
    assert client.reply_state(received, grown)[A].shape == (4, 2)
    # prune: false sends the full rank whatever the norms, and adds no regulariser.
    keep = HetLoRAClient(decay=0.5, reg=0.1, min_rank=1, prune=False)
    assert keep.reply_state(received, shrunk)[A].shape == (4, 2)
    assert keep.hooks(received, {}, {}).extra_loss(received) is None


def test_regulariser_gradient_reaches_only_the_tail():
    client = HetLoRAClient(decay=0.5, reg=1.0, min_rank=1, prune=True)
    params = {k: torch.nn.Parameter(v) for k, v in _factors(torch.tensor([[3.0, 0.0], [0.0, 4.0]])).items()}
    client.hooks({k: v.detach() for k, v in params.items()}, {}, {}).extra_loss(params).backward()
    assert torch.count_nonzero(params[B].grad[:, :2]) == 0
    assert torch.count_nonzero(params[B].grad[:, 2:]) > 0
    # d||B_T||_F / dB_T with A_T = I: B_T / ||B_T|| = [[.6, 0], [0, .8]].
    assert torch.allclose(params[B].grad[:, 2:], torch.tensor([[0.6, 0.0], [0.0, 0.8]]), atol=1e-5)


def test_server_keeps_pruned_ranks_and_checkpoints_them():
    strategy = HetLoRA(HetLoRA.Params(decay=0.5), num_clients=2)
    strategy.set_client_ranks({0: 4, 1: 2})
    assert strategy.reply_ranks(0) == (2, 4)
    global_state = {A: torch.zeros(4, 2), B: torch.zeros(2, 4)}
    pruned = {A: torch.ones(2, 2), B: torch.ones(2, 2)}
    strategy.aggregate(global_state, [ClientUpdate(0, 1, pruned)], round_num=1)
    assert strategy.client_rank(0) == 2 and strategy.client_rank(1) == 2
    saved = strategy.state_dict()
    assert saved["hetlora/ranks"].tolist() == [2, 2]
    restored = HetLoRA(HetLoRA.Params(decay=0.5), num_clients=2)
    restored.set_client_ranks({0: 4, 1: 2})
    restored.load_state_dict(saved)
    assert restored.client_rank(0) == 2
    with pytest.raises(ValueError, match=r"client 1's saved rank 3 is not in \[1, 2\]"):
        restored.load_state_dict({"hetlora/ranks": torch.tensor([2, 3])})
    with pytest.raises(ValueError, match="3 ranks saved; adapter.client_ranks has 2"):
        restored.load_state_dict({"hetlora/ranks": torch.tensor([2, 2, 2])})
