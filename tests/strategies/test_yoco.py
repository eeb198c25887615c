import math

import pytest
import torch

from fedumm.errors import ConfigError
from fedumm.strategies import ClientUpdate, LocalContext, validate_params
from fedumm.strategies.yoco import (
    YOCO,
    YOCOHooks,
    alpha_at,
    merge_lora,
    sign_loss,
    sign_target,
    sparsity_loss,
)

A, B = "m.lora_A.weight", "m.lora_B.weight"


def test_sign_target_of_a_diagonal_weight():
    # W = [[-3, 0, 0], [0, 2, 0]]: U_r sqrt(S_r) has one non-zero per column; the sign fix makes
    # each column's largest entry positive whatever sign LAPACK returns
    w = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert torch.equal(sign_target(w, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # rank 3 > min(d_out, d_in) = 2: the extra column has target 0
    assert torch.equal(sign_target(w, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def test_sign_target_is_sign_of_u_sqrt_s():
    torch.manual_seed(0)
    w = torch.randn(4, 3)
    target = sign_target(w, 2)
    u, s, _ = torch.linalg.svd(w.double(), full_matrices=False)
    b0 = u[:, :2] * s[:2].sqrt()
    # equal up to one sign per column (the singular vector's sign convention)
    for j in range(2):
        col = torch.sign(b0[:, j]).float()
        assert torch.equal(target[:, j], col) or torch.equal(target[:, j], -col)


def test_alpha_schedule_endpoints_and_midpoint():
    assert alpha_at(0, 10, 1.0, 200.0) == pytest.approx(1.0)
    assert alpha_at(5, 10, 1.0, 200.0) == pytest.approx(100.5)
    assert alpha_at(10, 10, 1.0, 200.0) == pytest.approx(200.0)


def test_sign_loss_value_and_gradient_by_hand():
    # Prepare: B 2x2, target R, alpha 2
    b = torch.tensor([[0.5, -0.5], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Execute
    loss = sign_loss(b, target, 2.0)
    loss.backward()
    # Assert: ||tanh(2B) - R||_F / (||R||_F + 1e-6)
    t = [[math.tanh(1.0), math.tanh(-1.0)], [0.0, math.tanh(2.0)]]
    diff = [[t[i][j] - target[i][j].item() for j in range(2)] for i in range(2)]
    norm = math.sqrt(sum(d * d for row in diff for d in row))
    denom = math.sqrt(2) + 1e-6
    assert loss.item() == pytest.approx(norm / denom, rel=1e-6)
    # d/dB_ij = 2 (1 - tanh^2(2 B_ij)) (tanh(2 B_ij) - R_ij) / (norm * denom)
    expected = [[2 * (1 - t[i][j] ** 2) * diff[i][j] / (norm * denom) for j in range(2)] for i in range(2)]
    assert torch.allclose(b.grad, torch.tensor(expected), atol=1e-6)


def test_sign_loss_pushes_a_zero_b_towards_its_target():
    b = torch.zeros(2, 2, requires_grad=True)
    target = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    sign_loss(b, target, 1.0).backward()
    # at B = 0: gradient = -alpha R / (||R|| (||R|| + eps)): a descent step moves B along sign(R)
    assert torch.allclose(-b.grad, target / (math.sqrt(3) * (math.sqrt(3) + 1e-6)), atol=1e-6)


def test_sparsity_loss_value_and_gradient():
    a = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -0.5]], requires_grad=True)
    loss = sparsity_loss(a)
    loss.backward()
    assert loss.item() == pytest.approx(4.0 / 6)
    assert torch.allclose(a.grad, torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]) / 6)


def test_hooks_weight_both_terms_and_follow_the_steps():
    # Prepare: lambda_sign 0.5, lambda_sparse 2, alpha 1 -> 3 over T = 2 steps
    params = validate_params("yoco", {"sign_weight": 0.5, "sparsity_weight": 2.0, "alpha_min": 1.0, "alpha_max": 3.0})
    b = torch.tensor([[0.5, -0.5], [0.0, 1.0]], requires_grad=True)
    a = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -0.5]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    hooks = YOCOHooks({B: target}, [A], total_steps=2, params=params)
    # Execute / Assert: step 0 uses alpha 1, after two steps alpha 3
    first = hooks.extra_loss({A: a, B: b})
    assert first.item() == pytest.approx(0.5 * sign_loss(b, target, 1.0).item() + 2.0 * 4 / 6, rel=1e-6)
    hooks.after_step({A: a, B: b}, 0.1)
    hooks.after_step({A: a, B: b}, 0.1)
    last = hooks.extra_loss({A: a, B: b})
    assert last.item() == pytest.approx(0.5 * sign_loss(b, target, 3.0).item() + 2.0 * 4 / 6, rel=1e-6)


def test_client_targets_come_from_the_frozen_weight():
    strategy = YOCO()
    w = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    g = {A: torch.zeros(2, 3), B: torch.zeros(2, 2)}
    hooks = strategy.client_algorithm().local_hooks(g, {}, {}, LocalContext(total_steps=4, base_weights={B: w}))
    assert torch.equal(hooks.targets[B], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert hooks.a_keys == [A] and hooks.total_steps == 4


def _two_clients():
    # B_k A_k: client 0 -> [[2,0,0],[0,0,0]] (10 rows), client 1 -> [[0,0,0],[0,4,0]] (30 rows)
    b0, a0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b1, a1 = torch.tensor([[0.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    return [
        ClientUpdate(0, 10, {A: a0, B: b0, "connector.weight": torch.tensor([4.0])}),
        ClientUpdate(1, 30, {A: a1, B: b1, "connector.weight": torch.tensor([0.0])}),
    ]


def test_merge_is_the_principal_split_of_the_weighted_mean_product():
    updates = _two_clients()
    # mean product 0.25 [[2,0,0],[0,0,0]] + 0.75 [[0,0,0],[0,4,0]] = [[0.5,0,0],[0,3,0]]:
    # sigma = (3, 0.5), u = e2, e1, v = e2, e1 -> B = [[0, sqrt .5],[sqrt 3, 0]], A = [[0, sqrt 3, 0],[sqrt .5, 0, 0]]
    a, b = merge_lora([u.state[A] for u in updates], [u.state[B] for u in updates], [10, 30])
    r3, r5 = math.sqrt(3), math.sqrt(0.5)
    assert torch.allclose(b.float(), torch.tensor([[0.0, r5], [r3, 0.0]]), atol=1e-6)
    assert torch.allclose(a.float(), torch.tensor([[0.0, r3, 0.0], [r5, 0.0, 0.0]]), atol=1e-6)


def test_aggregate_keeps_the_mean_update_that_factor_averaging_loses():
    updates = _two_clients()
    g = {A: torch.zeros(2, 3), B: torch.zeros(2, 2), "connector.weight": torch.zeros(1)}
    new = YOCO().aggregate(g, updates, 1)
    mean_product = torch.tensor([[0.5, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert torch.allclose(new[B] @ new[A], mean_product, atol=1e-6)
    naive = (0.25 * updates[0].state[B] + 0.75 * updates[1].state[B]) @ (
        0.25 * updates[0].state[A] + 0.75 * updates[1].state[A]
    )
    assert not torch.allclose(naive, mean_product)  # mean(B) mean(A) = [[0.125,0,0],[0,2.25,0]]
    assert torch.allclose(new["connector.weight"], torch.tensor([1.0]))  # 0.25 * 4 + 0.75 * 0


def test_rank_one_truncation_keeps_the_largest_component():
    updates = _two_clients()
    a_k = [u.state[A][:1] for u in updates]  # rank 1 factors: 1x3 A, 2x1 B
    b_k = [u.state[B][:, :1] for u in updates]
    b_k[1] = torch.tensor([[0.0], [1.0]])
    a_k[1] = torch.tensor([[0.0, 4.0, 0.0]])
    a, b = merge_lora(a_k, b_k, [10, 30])
    # mean product [[0.5,0,0],[0,3,0]]: rank 1 keeps sigma 3 only
    assert torch.allclose((b @ a).float(), torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), atol=1e-6)


def test_bad_alpha_range_names_the_key():
    with pytest.raises(ConfigError, match=r"federation.strategy.alpha_max: .*below alpha_min \(300.0\)"):
        validate_params("yoco", {"alpha_min": 300.0})
    with pytest.raises(ConfigError, match="federation.strategy.sign_weight"):
        validate_params("yoco", {"sign_weight": -1.0})


def test_client_runtime_hands_the_algorithm_its_step_count(toy_fit):
    from fedumm.strategies import ClientAlgorithm

    seen = []

    class Recorder(ClientAlgorithm):
        def local_hooks(self, global_state, server_extras, client_state, context):
            seen.append(context)
            return super().local_hooks(global_state, server_extras, client_state, context)

    # one row, batch 1, 3 local epochs: 3 optimizer steps; no base weights asked for
    toy_fit(Recorder(), [0.0, 0.0], {}, ["train.local_epochs=3", "train.lr=0.1"])
    assert seen[0].total_steps == 3 and seen[0].base_weights == {}
