"""FedAdam / FedYogi / FedAdagrad against hand-computed values, both variants, two rounds.

Numbers are chosen so square roots come out whole: tau = 1 (v_0 = 1) with beta2 = 0.5 gives
v = 0.5 + 0.5 * 49 = 25 for Δ = 7; tau = 3 (v_0 = 9) with Δ = 4 gives v = 9 + 16 = 25."""

import math

import pytest
import torch

from fedumm.errors import AdapterStateError
from fedumm.strategies import STRATEGIES, ClientUpdate, FedAdagrad, FedAdam, FedYogi
from fedumm.strategies.fedopt import FedAdagradParams, FedOptParams, fedopt_step


def _round(strategy, global_w, clients, round_num):
    """clients: [(value of 'w', num_samples)] -> new global 'w' value."""
    updates = [ClientUpdate(i, n, {"w": torch.tensor([w])}) for i, (w, n) in enumerate(clients)]
    return strategy.aggregate({"w": torch.tensor([global_w])}, updates, round_num)["w"].item()


ADAM_LIKE = dict(eta=6.0, beta1=0.5, beta2=0.5, tau=1.0)


def test_fedadam_paper_two_rounds():
    strategy = FedAdam(FedOptParams(**ADAM_LIKE))
    # Round 1: weighted Δ = (1*4 + 2*8.5)/3 = 7 (the plain mean would be 6.25)
    #   m = 0.5*0 + 0.5*7 = 3.5; v = 0.5*1 + 0.5*49 = 25; θ = 0 + 6 * 3.5 / (5 + 1) = 3.5
    assert _round(strategy, 0.0, [(4.0, 1), (8.5, 2)], 1) == pytest.approx(3.5)
    assert strategy.m["w"].item() == pytest.approx(3.5) and strategy.v["w"].item() == pytest.approx(25.0)
    # Round 2: Δ = 8.5 - 3.5 = 5; m = 1.75 + 2.5 = 4.25; v = 12.5 + 12.5 = 25; θ = 3.5 + 6*4.25/6 = 7.75
    assert _round(strategy, 3.5, [(8.5, 3), (8.5, 1)], 2) == pytest.approx(7.75)


def test_fedyogi_paper_two_rounds_both_signs():
    strategy = FedYogi(FedOptParams(**ADAM_LIKE))
    # Round 1: Δ = (1*2 + 1*6)/2 = 4; m = 2; v = 1 - 0.5*16*sign(1 - 16) = 9; θ = 6*2/(3 + 1) = 3
    assert _round(strategy, 0.0, [(2.0, 1), (6.0, 1)], 1) == pytest.approx(3.0)
    assert strategy.v["w"].item() == pytest.approx(9.0)
    # Round 2: Δ = 5 - 3 = 2; m = 1 + 1 = 2; v = 9 - 0.5*4*sign(9 - 4) = 7 (Adam would give 6.5)
    #   θ = 3 + 6*2/(sqrt(7) + 1)
    assert _round(strategy, 3.0, [(5.0, 1)], 2) == pytest.approx(3 + 12 / (math.sqrt(7) + 1))
    assert strategy.v["w"].item() == pytest.approx(7.0)


def test_fedadagrad_paper_two_rounds():
    strategy = FedAdagrad(FedAdagradParams(eta=4.0, beta1=0.5, tau=3.0))
    # Round 1: Δ = (3*4 + 1*4)/4 = 4; m = 2; v = 9 + 16 = 25; θ = 4*2/(5 + 3) = 1
    assert _round(strategy, 0.0, [(4.0, 3), (4.0, 1)], 1) == pytest.approx(1.0)
    # Round 2: Δ = 13 - 1 = 12; m = 1 + 6 = 7; v = 25 + 144 = 169; θ = 1 + 4*7/(13 + 3) = 2.75
    assert _round(strategy, 1.0, [(13.0, 1)], 2) == pytest.approx(2.75)
    assert strategy.v["w"].item() == pytest.approx(169.0)


def test_fedadam_openfedllm_two_rounds():
    strategy = FedAdam(FedOptParams(**ADAM_LIKE, variant="openfedllm"))
    # Round 1: UNWEIGHTED Δ = (4 + 10)/2 = 7 (weighted would be 8.5); m = Δ = 7 (first update);
    #   v = 0.5*1 + 0.5*m² = 25; θ = 6*7/(5 + 1) = 7
    assert _round(strategy, 0.0, [(4.0, 1), (10.0, 3)], 1) == pytest.approx(7.0)
    # Round 2: Δ = 3; m = 3.5 + 1.5 = 5; v = 12.5 + 0.5*25 = 25 (from m², paper: 12.5 + 4.5 = 17)
    #   θ = 7 + 6*5/6 = 12
    assert _round(strategy, 7.0, [(10.0, 1)], 2) == pytest.approx(12.0)
    assert strategy.v["w"].item() == pytest.approx(25.0)


def test_fedyogi_openfedllm_two_rounds():
    strategy = FedYogi(FedOptParams(**ADAM_LIKE, variant="openfedllm"))
    # Round 1: unweighted Δ = (1 + 7)/2 = 4 (weighted (5*1 + 7)/6 = 2); m = 4; v = 1 + 0.5*16 = 9
    #   θ = 6*4/(3 + 1) = 6
    assert _round(strategy, 0.0, [(1.0, 5), (7.0, 1)], 1) == pytest.approx(6.0)
    # Round 2: Δ = 0; m = 0.5*4 = 2; m² = 4 < v: v = 9 - 0.5*4 = 7; θ = 6 + 6*2/(sqrt(7) + 1)
    assert _round(strategy, 6.0, [(6.0, 1)], 2) == pytest.approx(6 + 12 / (math.sqrt(7) + 1))


def test_fedadagrad_openfedllm_has_no_momentum():
    strategy = FedAdagrad(FedAdagradParams(eta=4.0, beta1=0.5, tau=3.0, variant="openfedllm"))
    # Round 1: unweighted Δ = (0 + 8)/2 = 4 (weighted 6); m = 4; v = 9 + 16 = 25; θ = 4*4/(5 + 3) = 2
    assert _round(strategy, 0.0, [(0.0, 1), (8.0, 3)], 1) == pytest.approx(2.0)
    # Round 2: Δ = 12; m = Δ = 12 (beta1 unused); v = 25 + 144 = 169; θ = 2 + 4*12/16 = 5
    assert _round(strategy, 2.0, [(14.0, 1)], 2) == pytest.approx(5.0)


def test_optional_bias_correction():
    strategy = FedAdam(FedOptParams(**ADAM_LIKE, bias_correction=True))
    # Round 1 (t = 1): m = 3.5 -> m̂ = 3.5/(1 - 0.5) = 7; v = 25 -> v̂ = 25/0.5 = 50
    #   θ = 6*7/(sqrt(50) + 1)
    theta1 = 42 / (math.sqrt(50) + 1)
    assert _round(strategy, 0.0, [(7.0, 1)], 1) == pytest.approx(theta1)
    # Round 2 (t = 2): Δ = 5 -> m = 4.25, m̂ = 4.25/0.75; v = 25, v̂ = 25/0.75
    theta2 = theta1 + 6 * (4.25 / 0.75) / (math.sqrt(25 / 0.75) + 1)
    assert _round(strategy, theta1, [(theta1 + 5.0, 1)], 2) == pytest.approx(theta2)
    assert strategy.steps["w"].item() == 2


def test_core_is_elementwise_on_tensors():
    x, m, v = fedopt_step(torch.zeros(2), torch.tensor([7.0, -7.0]), None, None, 1, rule="adam", **ADAM_LIKE)
    # Per coordinate as in the Adam test, with the sign of Δ.
    assert torch.allclose(x, torch.tensor([3.5, -3.5])) and torch.allclose(v, torch.tensor([25.0, 25.0]))


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_state_dict_round_trip_continues_identically(cls):
    from safetensors.torch import load, save

    params = cls.Params(eta=0.5, tau=0.1)
    first = cls(params)
    _round(first, 0.0, [(1.0, 1), (2.0, 3)], 1)
    restored = cls(params)
    restored.load_state_dict(load(save(first.state_dict())))  # as the checkpoint stores it
    assert set(first.state_dict()) == {"m/w", "v/w", "step/w"}
    assert _round(first, 1.0, [(0.5, 1)], 2) == pytest.approx(_round(restored, 1.0, [(0.5, 1)], 2), rel=0, abs=0)
    assert torch.equal(first.v["w"], restored.v["w"]) and first.steps["w"].item() == 2


def test_server_state_is_created_per_key_when_first_trained():
    strategy = FedAdam(FedOptParams(**ADAM_LIKE))
    strategy.aggregate({"a": torch.zeros(1)}, [ClientUpdate(0, 1, {"a": torch.full((1,), 7.0)})], 1)
    new = strategy.aggregate(
        {"a": torch.zeros(1), "b": torch.zeros(1)},
        [ClientUpdate(0, 1, {"a": torch.zeros(1), "b": torch.full((1,), 7.0)})],
        2,
    )
    # b's first update matches a's first one: θ_b = 3.5 (see the Adam test); a has step 2 now.
    assert new["b"].item() == pytest.approx(3.5)
    assert strategy.steps["a"].item() == 2 and strategy.steps["b"].item() == 1


def test_load_rejects_inconsistent_state_and_shape_mismatch():
    strategy = FedAdam()
    with pytest.raises(ValueError, match="same keys"):
        strategy.load_state_dict({"m/w": torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected server state key"):
        strategy.load_state_dict({"velocity/w": torch.zeros(2)})
    strategy.load_state_dict({"m/w": torch.zeros(3), "v/w": torch.ones(3), "step/w": torch.ones(1)})
    with pytest.raises(AdapterStateError, match="shape mismatch for 'w'"):
        strategy.aggregate({"w": torch.zeros(2)}, [ClientUpdate(0, 1, {"w": torch.ones(2)})], 1)


def test_registered_names_and_adagrad_has_no_beta2():
    assert STRATEGIES["fedadam"] is FedAdam and STRATEGIES["fedyogi"] is FedYogi
    assert STRATEGIES["fedadagrad"] is FedAdagrad
    assert "beta2" not in FedAdagrad.Params.model_fields and "beta2" in FedAdam.Params.model_fields


def test_default_etas_give_the_same_first_server_step():
    # Prepare: one client delta of 1 per coordinate (>> tau), from θ = 0.
    updates = [ClientUpdate(0, 1, {"w": torch.tensor([1.0, -1.0])})]
    steps = {}
    for cls in (FedAdam, FedYogi, FedAdagrad):
        # Execute
        steps[cls.name] = cls().aggregate({"w": torch.zeros(2)}, updates, 1)["w"]
    # Assert: Adam/Yogi: eta (1 - beta1) Δ / (sqrt((1 - beta2) Δ²) + tau) = 0.01 * 0.1 / (0.1 + 0.001) ≈ 0.0099;
    # Adagrad: v = tau² + Δ², so 0.1 * 0.1 / (1 + 0.001) ≈ 0.00999: its 10x larger default eta matches them.
    for name in ("fedadam", "fedyogi"):
        assert torch.allclose(steps[name], torch.tensor([0.0099, -0.0099]), atol=1e-5), name
    assert torch.allclose(steps["fedadagrad"], torch.tensor([0.00999, -0.00999]), atol=1e-5)
