import numpy as np
import pytest
import torch

from fedumm.errors import ConfigError
from fedumm.strategies import ClientUpdate, validate_params
from fedumm.strategies.ot_align import OTAlign, align

ot = pytest.importorskip("ot")

A, B = "m.lora_A.weight", "m.lora_B.weight"
REF = torch.tensor([[0.1, 0.5, 0.3], [0.2, 0.6, 0.4]])
OTHER = torch.tensor([[3.0, 1.0, 2.0], [6.0, 5.0, 4.0]])
# By hand: the monotone coupling sends OTHER's k-th smallest value to REF's k-th smallest position.
ALIGNED = torch.tensor([[1.0, 5.0, 3.0], [2.0, 6.0, 4.0]])


def test_barycentric_alignment_by_hand():
    assert torch.allclose(align(REF, OTHER), ALIGNED)


def test_reference_projection_is_the_plan_times_w2_scaled_by_one_over_n():
    assert torch.allclose(align(REF, OTHER, "reference"), ALIGNED / 6)


@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_matches_pot_emd_called_directly(seed):
    # Prepare: random 2x3 factors; POT's exact solver on the squared-distance cost, uniform marginals
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    plan = ot.emd([], [], ot.dist(w1.reshape(-1, 1), w2.reshape(-1, 1)))
    reference_form = (plan @ w2.reshape(-1, 1)).reshape(2, 3)
    barycentric = (plan @ w2.reshape(-1, 1) / plan.sum(axis=1, keepdims=True)).reshape(2, 3)
    # Execute
    ours_bary = align(torch.tensor(w1), torch.tensor(w2))
    ours_ref = align(torch.tensor(w1), torch.tensor(w2), "reference")
    # Assert
    assert np.allclose(ours_bary.numpy(), barycentric, atol=1e-6)
    assert np.allclose(ours_ref.numpy(), reference_form, atol=1e-6)
    assert np.allclose(barycentric, 6 * reference_form)


def test_strategy_aligns_to_the_lowest_client_id_then_averages():
    # Prepare: client 1 (the reference) listed after client 4; a non-LoRA tensor is not aligned
    g = {A: torch.zeros(2, 3), "connector.weight": torch.zeros(2)}
    updates = [
        ClientUpdate(4, 5, {A: OTHER, "connector.weight": torch.tensor([1.0, 3.0])}),
        ClientUpdate(1, 5, {A: REF, "connector.weight": torch.tensor([3.0, 1.0])}),
    ]
    # Execute
    bary = OTAlign().aggregate(g, updates, 1)
    reference = OTAlign(validate_params("ot_align", {"projection": "reference"})).aggregate(g, updates, 1)
    # Assert
    assert torch.allclose(bary[A], (REF + ALIGNED) / 2)
    assert torch.allclose(reference[A], (REF + ALIGNED / 6) / 2)
    assert torch.allclose(bary["connector.weight"], torch.tensor([2.0, 2.0]))


def test_three_clients_each_aligned_to_the_reference():
    g = {B: torch.zeros(3, 2)}
    ref = torch.tensor([[0.0, 2.0], [1.0, 3.0], [4.0, 5.0]])
    c1 = torch.tensor([[10.0, 11.0], [12.0, 13.0], [14.0, 15.0]])
    c2 = -c1
    new = OTAlign().aggregate(g, [ClientUpdate(i, 1, {B: s}) for i, s in enumerate((ref, c1, c2))], 1)
    # ref's ranks: 0.0->0, 1.0->1, 2.0->2, 3.0->3, 4.0->4, 5.0->5 (positions (0,0),(1,0),(0,1),(1,1),(2,0),(2,1))
    a1 = torch.tensor([[10.0, 12.0], [11.0, 13.0], [14.0, 15.0]])
    a2 = torch.tensor([[-15.0, -13.0], [-14.0, -12.0], [-11.0, -10.0]])
    assert torch.allclose(new[B], (ref + a1 + a2) / 3)


def test_bad_projection_names_the_key():
    with pytest.raises(ConfigError, match="federation.strategy.projection"):
        validate_params("ot_align", {"projection": "scaled"})
