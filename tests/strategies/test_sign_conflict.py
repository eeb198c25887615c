import pytest
import torch

from fedumm.strategies import ClientUpdate, validate_params
from fedumm.strategies.sign_conflict import SignConflict, conflict_ratio, conflict_sums, kept_clients

A, B, C = "m.lora_A.weight", "m.lora_B.weight", "n.lora_A.weight"


def test_conflict_ratio_counts_opposite_signs_only():
    # 2x3: opposite signs at (0,0) and (1,2); zeros at (0,1) are no conflict
    x = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, -1.0]])
    y = torch.tensor([[-1.0, 5.0, 2.0], [3.0, 1.0, 4.0]])
    assert conflict_ratio(x, y) == pytest.approx(2 / 6)


def _clients():
    """Tensor A: client 2 disagrees with both others in 5 of 6 elements (sums 5/6, 5/6, 10/6);
    tensor B: all positive (sums 0); tensor C: each client is the odd sign in two elements
    (every pairwise ratio 4/6, sums 4/3)."""
    a = [
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [[1.0, 1.0, 1.0], [1.0, 1.0, 2.0]],
        [[-1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]],
    ]
    b = [[[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], [[2.0, 2.0, 2.0], [3.0, 1.0, 1.0]], [[3.0, 2.0, 1.0], [2.0, 1.0, 4.0]]]
    c = [
        [[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]],
        [[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]],
        [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0]],
    ]
    return [
        ClientUpdate(i, 10 * (i + 1), {A: torch.tensor(a[i]), B: torch.tensor(b[i]), C: torch.tensor(c[i])})
        for i in range(3)
    ]


def test_conflict_sums_by_hand():
    updates = _clients()
    assert conflict_sums([u.state[A] for u in updates]).tolist() == pytest.approx([5 / 6, 5 / 6, 10 / 6])
    assert conflict_sums([u.state[C] for u in updates]).tolist() == pytest.approx([4 / 3, 4 / 3, 4 / 3])


def _only(updates, keys):
    return [ClientUpdate(u.client_id, u.num_samples, {k: u.state[k] for k in keys}) for u in updates]


def test_pooled_bound_drops_the_conflicting_client():
    # Prepare: pooled sums over (A, B) x 3 clients [5/6, 5/6, 10/6, 0, 0, 0]: mean 5/9, population
    # std sqrt(mean of squares 25/36 - (5/9)^2) = 0.6211 -> bound 1.1767
    updates = _only(_clients(), [A, B])
    pooled = torch.tensor([5 / 6, 5 / 6, 10 / 6, 0, 0, 0], dtype=torch.float64)
    assert float(pooled.mean() + pooled.std(correction=0)) == pytest.approx(1.1767, abs=1e-4)
    g = {A: torch.zeros(2, 3), B: torch.zeros(2, 3)}
    # Execute
    new = SignConflict().aggregate(g, updates, 1)
    # Assert: A = mean of clients 0 and 1 (client 2 at 10/6 > 1.1767); B = mean of all three
    assert torch.allclose(new[A], torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.5]]))
    assert torch.allclose(new[B], torch.tensor([[2.0, 2.0, 2.0], [2.0, 1.0, 2.0]]))


def test_pooled_bound_can_leave_a_tensor_to_its_global_value():
    # Prepare: B and a copy D have sums 0, C has 4/3 for every client: pooled mean 4/9, population
    # std sqrt(32/81) = 0.6285 -> bound 1.0729 < 4/3: no client of C is kept
    d = "n.lora_B.weight"
    updates = [
        ClientUpdate(u.client_id, u.num_samples, {B: u.state[B], d: u.state[B].clone(), C: u.state[C]})
        for u in _clients()
    ]
    g = {B: torch.zeros(2, 3), d: torch.zeros(2, 3), C: torch.full((2, 3), 9.0)}
    # Execute
    new = SignConflict().aggregate(g, updates, 1)
    # Assert: C keeps its global value (the reference's behaviour); B and D are plain means
    assert torch.equal(new[C], g[C])
    assert torch.allclose(new[d], torch.tensor([[2.0, 2.0, 2.0], [2.0, 1.0, 2.0]]))


def test_per_tensor_bound_keeps_a_tensor_whose_clients_conflict_equally():
    updates = _clients()
    g = {A: torch.zeros(2, 3), B: torch.zeros(2, 3), C: torch.zeros(2, 3)}
    strategy = SignConflict(validate_params("sign_conflict", {"scope": "per_tensor"}))
    new = strategy.aggregate(g, updates, 1)
    # A: sums [5/6, 5/6, 10/6], mean 10/9, population std 0.3928 -> bound 1.504 < 10/6: client 2 out
    assert torch.allclose(new[A], torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.5]]))
    # C: all sums 4/3 = mean, std 0: every client kept -> plain mean
    expected_c = torch.stack([u.state[C] for u in updates]).mean(dim=0)
    assert torch.allclose(new[C], expected_c)


def test_non_lora_tensors_take_the_plain_mean():
    updates = [ClientUpdate(i, 1, {"connector.weight": torch.tensor([float(i), -1.0])}) for i in range(3)]
    new = SignConflict().aggregate({"connector.weight": torch.zeros(2)}, updates, 1)
    assert torch.allclose(new["connector.weight"], torch.tensor([1.0, -1.0]))


def test_kept_clients_with_an_explicit_pool():
    sums = {"t": torch.tensor([0.0, 1.0], dtype=torch.float64), "u": torch.tensor([3.0, 0.0], dtype=torch.float64)}
    # pooled [0, 1, 3, 0]: mean 1, population std sqrt((1 + 0 + 4 + 1) / 4) = 1.2247 -> bound 2.2247
    assert kept_clients(sums, "all_tensors") == {"t": [0, 1], "u": [1]}


def test_bad_scope_names_the_key():
    from fedumm.errors import ConfigError

    with pytest.raises(ConfigError, match="federation.strategy.scope"):
        validate_params("sign_conflict", {"scope": "global"})
