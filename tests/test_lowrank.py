"""LoRA factor arithmetic: truncation, zero-padding, ranks and the SVD split, on hand-built factors."""

import pytest
import torch

from fedumm.lowrank import pad, product, rank_shapes, split_svd, state_rank, truncate

M = "layers.0.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"


def _state(rank: int) -> dict[str, torch.Tensor]:
    # A: rank x 3 with rows 1.., B: 2 x rank with columns 10..
    a = torch.arange(1.0, 1.0 + 3 * rank).reshape(rank, 3)
    b = torch.arange(10.0, 10.0 + 2 * rank).reshape(2, rank)
    return {A: a, B: b, "connector.weight": torch.ones(2)}


def test_truncate_keeps_the_first_components_and_other_keys():
    state = _state(3)
    cut = truncate(state, 2)
    assert torch.equal(cut[A], torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert torch.equal(cut[B], torch.tensor([[10.0, 11.0], [13.0, 14.0]]))
    assert torch.equal(cut["connector.weight"], torch.ones(2))
    assert state_rank(cut) == 2


def test_pad_adds_zero_components_and_keeps_the_product():
    state = _state(2)
    padded = pad(state, 4)
    assert padded[A].shape == (4, 3) and padded[B].shape == (2, 4)
    assert torch.count_nonzero(padded[A][2:]) == 0 and torch.count_nonzero(padded[B][:, 2:]) == 0
    assert torch.equal(product(padded, M), product(state, M))
    assert torch.equal(truncate(padded, 2)[A], state[A])
    with pytest.raises(ValueError, match="rank 2, above the 1"):
        pad(state, 1)


def test_state_rank_refuses_mixed_ranks_and_rank_shapes_follow():
    assert state_rank({"connector.weight": torch.ones(1)}) is None
    with pytest.raises(ValueError, match="different ranks"):
        state_rank({A: torch.zeros(2, 3), B: torch.zeros(2, 3)})
    assert rank_shapes({A: (8, 3), B: (2, 8), "c": (5,)}, 4) == {A: (4, 3), B: (2, 4), "c": (5,)}


def test_split_svd_is_the_best_low_rank_approximation():
    # Prepare: a 3 x 3 matrix with singular values 5, 2, 0.5 in known directions.
    q1, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    q2, _ = torch.linalg.qr(torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    delta = q1 @ torch.diag(torch.tensor([5.0, 2.0, 0.5])) @ q2.T
    # Execute
    b, a = split_svd(delta, 2)
    # Assert: B A equals torch.linalg.svd's rank-2 truncation; error = the dropped value 0.5.
    u, s, vh = torch.linalg.svd(delta)
    assert torch.allclose(b @ a, u[:, :2] @ torch.diag(s[:2]) @ vh[:2], atol=1e-6)
    assert torch.linalg.matrix_norm(delta - b @ a).item() == pytest.approx(0.5, abs=1e-5)
    # Columns of B and rows of A carry sqrt(sigma) each.
    assert torch.linalg.vector_norm(b[:, 0]).item() == pytest.approx(5.0**0.5, abs=1e-5)
    assert torch.linalg.vector_norm(a[0]).item() == pytest.approx(5.0**0.5, abs=1e-5)
    # Asked for more components than the matrix has: the extra ones are zero.
    b4, a4 = split_svd(delta, 4)
    assert torch.count_nonzero(b4[:, 3]) == 0 and torch.count_nonzero(a4[3]) == 0
    assert torch.allclose(b4 @ a4, delta, atol=1e-5)
