"""FlexLoRA: the weighted average of the products B_k A_k, factorised by SVD and cut to each
client's rank, against torch.linalg.svd on hand-built factors."""

import torch

from fedumm.lowrank import truncate
from fedumm.strategies import ClientUpdate, FlexLoRA

M = "layers.0.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"


def _updates(n0=1, n1=1):
    # B0 A0 = [[1, 0], [1, 0]] (rank 1), B1 A1 = [[0, 2], [1, 0]] (rank 2).
    c0 = {A: torch.tensor([[1.0, 0.0]]), B: torch.tensor([[1.0], [1.0]]), "proj.bias": torch.tensor([2.0])}
    c1 = {
        A: torch.tensor([[0.0, 2.0], [1.0, 0.0]]),
        B: torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "proj.bias": torch.tensor([6.0]),
    }
    return [ClientUpdate(0, n0, c0), ClientUpdate(1, n1, c1)]


def _global():
    return {A: torch.zeros(2, 2), B: torch.zeros(2, 2), "proj.bias": torch.zeros(1)}


def test_global_product_is_the_weighted_average_of_the_products():
    new = FlexLoRA().aggregate(_global(), _updates(n0=1, n1=3), round_num=1)
    # 1/4 [[1, 0], [1, 0]] + 3/4 [[0, 2], [1, 0]] = [[.25, 1.5], [1, 0]]; rank 2 = R: exact.
    assert (new[B] @ new[A] - torch.tensor([[0.25, 1.5], [1.0, 0.0]])).abs().max().item() <= 1e-6
    # Other tensors: the sample-weighted mean, (2 + 3 * 6) / 4 = 5.
    assert torch.allclose(new["proj.bias"], torch.tensor([5.0]))


def test_each_client_receives_the_best_approximation_of_its_rank():
    new = FlexLoRA().aggregate(_global(), _updates(), round_num=1)
    mean = torch.tensor([[0.5, 1.0], [1.0, 0.0]])
    u, s, vh = torch.linalg.svd(mean)
    # A rank-1 client gets the top singular triple s1 u1 v1^T.
    rank1 = truncate(new, 1)
    assert rank1[A].shape == (1, 2) and rank1[B].shape == (2, 1)
    assert (rank1[B] @ rank1[A] - s[0] * torch.outer(u[:, 0], vh[0])).abs().max().item() <= 1e-6
    # The hand value of the top singular value of [[.5, 1], [1, 0]]: (0.5 + sqrt(4.25)) / 2.
    assert abs(s[0].item() - (0.5 + 4.25**0.5) / 2) <= 1e-6


def test_global_rank_below_the_average_keeps_the_top_components():
    # R = 1 while the average has rank 2: the global is its rank-1 truncation.
    global_state = {A: torch.zeros(1, 2), B: torch.zeros(2, 1), "proj.bias": torch.zeros(1)}
    rank1 = [
        ClientUpdate(
            0, 1, {A: torch.tensor([[1.0, 0.0]]), B: torch.tensor([[3.0], [0.0]]), "proj.bias": torch.ones(1)}
        ),
        ClientUpdate(
            1, 1, {A: torch.tensor([[0.0, 1.0]]), B: torch.tensor([[0.0], [1.0]]), "proj.bias": torch.ones(1)}
        ),
    ]
    new = FlexLoRA().aggregate(global_state, rank1, round_num=1)
    # Mean = diag(1.5, 0.5); rank 1 keeps diag(1.5, 0).
    assert (new[B] @ new[A] - torch.tensor([[1.5, 0.0], [0.0, 0.0]])).abs().max().item() <= 1e-6
