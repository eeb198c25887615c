import pytest
import torch

from fedumm.errors import AdapterStateError
from fedumm.strategies import STRATEGIES, ClientUpdate
from fedumm.strategies.mean import OneShotMean

A, B = "m.lora_A.weight", "m.lora_B.weight"


def _update(cid, samples, a, b):
    return ClientUpdate(cid, samples, {A: torch.tensor(a), B: torch.tensor(b)})


def test_plain_mean_ignores_sample_counts():
    # Prepare: three clients with 2x3 A and 3x2 B; very different sample counts
    g = {A: torch.zeros(2, 3), B: torch.zeros(3, 2)}
    updates = [
        _update(0, 1, [[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]], [[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]]),
        _update(1, 100, [[4.0, 2.0, 0.0], [3.0, 0.0, 0.0]], [[2.0, 0.0], [3.0, 0.0], [0.0, 0.0]]),
        _update(2, 7, [[1.0, 2.0, 0.0], [0.0, 3.0, 0.0]], [[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]]),
    ]
    # Execute
    new = OneShotMean().aggregate(g, updates, 1)
    # Assert: element-wise (x0 + x1 + x2) / 3
    assert torch.allclose(new[A], torch.tensor([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0]]))
    assert torch.allclose(new[B], torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))


def test_mean_refuses_an_upload_of_another_layout():
    g = {A: torch.zeros(2, 3)}
    with pytest.raises(AdapterStateError, match="client 1 state"):
        OneShotMean().aggregate(
            g, [ClientUpdate(0, 1, {A: torch.ones(2, 3)}), ClientUpdate(1, 1, {A: torch.ones(3, 2)})], 1
        )


def test_registered_for_one_shot_only():
    assert STRATEGIES["mean"] is OneShotMean and OneShotMean.modes == ("one_shot",)
