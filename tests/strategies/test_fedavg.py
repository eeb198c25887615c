import pytest
import torch

from fedumm.errors import AdapterStateError
from fedumm.strategies import ClientUpdate, FedAvg, weighted_average


def test_fedavg_weights_by_sample_count():
    # Prepare: 3 clients with 1, 2 and 5 samples.
    global_state = {"w": torch.zeros(2), "b": torch.zeros(1)}
    updates = [
        ClientUpdate(0, 1, {"w": torch.tensor([8.0, 0.0]), "b": torch.tensor([1.0])}),
        ClientUpdate(1, 2, {"w": torch.tensor([0.0, 4.0]), "b": torch.tensor([2.0])}),
        ClientUpdate(2, 5, {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([3.0])}),
    ]
    # Execute
    new = FedAvg().aggregate(global_state, updates, round_num=1)
    # Assert: w = (1*[8,0] + 2*[0,4] + 5*[0,0]) / 8 = [1, 1]; b = (1 + 4 + 15) / 8 = 2.5
    assert torch.allclose(new["w"], torch.tensor([1.0, 1.0]))
    assert torch.allclose(new["b"], torch.tensor([2.5]))


def test_accumulates_in_float32_and_casts_back():
    # 0.1 is not representable in fp16; summing 3 fp16 values in fp16 would drift.
    states = [{"w": torch.tensor([0.1], dtype=torch.float16)}] * 3
    out = weighted_average(states, [1, 1, 1])
    assert out["w"].dtype == torch.float16
    assert out["w"].item() == torch.tensor([0.1], dtype=torch.float16).item()


def test_no_updates_keeps_global_state():
    global_state = {"w": torch.tensor([3.0])}
    assert torch.equal(FedAvg().aggregate(global_state, [], 1)["w"], global_state["w"])


@pytest.mark.parametrize(
    ("second", "fragment"),
    [
        ({"w": torch.zeros(3)}, "shape mismatch for 'w'"),
        ({"v": torch.zeros(2)}, "1 missing key"),
        ({"w": torch.zeros(2), "x": torch.zeros(1)}, "1 unexpected key"),
    ],
)
def test_mismatched_client_states_fail_before_arithmetic(second, fragment):
    with pytest.raises(AdapterStateError, match=fragment):
        weighted_average([{"w": torch.zeros(2)}, second], [1, 1])


def test_bad_weights_rejected():
    with pytest.raises(ValueError, match="positive sum"):
        weighted_average([{"w": torch.zeros(1)}], [0])


def test_per_key_weights_average_each_key_over_the_updates_that_trained_it():
    # Prepare: key "a" trained by clients 0 (1 row) and 1 (3 rows); key "b" by client 2 only.
    global_state = {"a": torch.tensor([0.0]), "b": torch.tensor([10.0])}
    updates = [
        ClientUpdate(0, 1, {"a": torch.tensor([4.0]), "b": torch.tensor([10.0])}, key_samples={"a": 1, "b": 0}),
        ClientUpdate(1, 3, {"a": torch.tensor([8.0]), "b": torch.tensor([10.0])}, key_samples={"a": 3, "b": 0}),
        ClientUpdate(2, 2, {"a": torch.tensor([0.0]), "b": torch.tensor([-2.0])}, key_samples={"a": 0, "b": 2}),
    ]
    # Execute
    new = FedAvg().aggregate(global_state, updates, round_num=1)
    # Assert: a = (1*4 + 3*8) / 4 = 7; b = client 2's -2 (not (10 + 30 - 4) / 6 = 6).
    assert new["a"].item() == pytest.approx(7.0)
    assert new["b"].item() == pytest.approx(-2.0)


def test_a_key_no_update_trained_keeps_the_global_value():
    global_state = {"a": torch.tensor([1.5], dtype=torch.float64)}
    updates = [ClientUpdate(0, 4, {"a": torch.tensor([9.0], dtype=torch.float64)}, key_samples={"a": 0})]
    new = FedAvg().aggregate(global_state, updates, round_num=1)
    assert new["a"].item() == 1.5 and new["a"].dtype == torch.float64
