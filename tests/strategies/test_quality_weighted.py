import pytest
import torch

from fedumm.errors import ConfigError
from fedumm.strategies import ClientUpdate, FedAvg
from fedumm.strategies.quality_weighted import QualityWeighted, QualityWeightedParams, quality_weights


def _updates(rows):
    """rows: [(value of 'w', num_samples, metrics)]"""
    return [ClientUpdate(i, n, {"w": torch.tensor([w])}, metrics) for i, (w, n, metrics) in enumerate(rows)]


def test_weights_are_sample_share_times_score_renormalised():
    # Prepare: n = 10, 20, 40; q = 0.6, 0.3, 0.0 (floored to epsilon = 0.05)
    updates = _updates([(7.0, 10, {"local_vqa_accuracy": 0.6}), (0.0, 20, {"local_vqa_accuracy": 0.3}),
                        (14.0, 40, {"local_vqa_accuracy": 0.0})])
    strategy = QualityWeighted(QualityWeightedParams(epsilon=0.05))
    # Execute
    weights = quality_weights(updates, "local_vqa_accuracy", 0.05)
    new = strategy.aggregate({"w": torch.zeros(1)}, updates, 1)
    # Assert: n*q = 6, 6, 40*0.05 = 2 -> w = 3/7, 3/7, 1/7; θ = (3*7 + 3*0 + 1*14)/7 = 5
    assert weights == pytest.approx([3 / 7, 3 / 7, 1 / 7])
    assert new["w"].item() == pytest.approx(5.0)
    # FedAvg on the same updates: (10*7 + 0 + 40*14)/70 = 9
    assert FedAvg().aggregate({"w": torch.zeros(1)}, updates, 1)["w"].item() == pytest.approx(9.0)


def test_all_zero_scores_fall_back_to_sample_weighting():
    updates = _updates([(1.0, 1, {"local_vqa_accuracy": 0.0}), (4.0, 3, {"local_vqa_accuracy": 0.0})])
    new = QualityWeighted().aggregate({"w": torch.zeros(1)}, updates, 1)
    assert new["w"].item() == pytest.approx((1 * 1 + 3 * 4) / 4)  # 3.25, as FedAvg


def test_metric_name_is_configurable():
    updates = _updates([(2.0, 1, {"f1": 0.75}), (6.0, 1, {"f1": 0.25})])
    new = QualityWeighted(QualityWeightedParams(metric="f1")).aggregate({"w": torch.zeros(1)}, updates, 1)
    assert new["w"].item() == pytest.approx(0.75 * 2 + 0.25 * 6)  # 3.0


def test_missing_metric_says_to_enable_client_evaluation():
    updates = _updates([(1.0, 1, {"local_vqa_accuracy": 0.5}), (2.0, 1, {"train_loss": 0.3})])
    with pytest.raises(ConfigError, match=r"client 1 reported no 'local_vqa_accuracy'.*eval\.clients=true"):
        QualityWeighted().aggregate({"w": torch.zeros(1)}, updates, 1)


@pytest.mark.parametrize("score", [-0.1, float("nan")])
def test_invalid_scores_rejected(score):
    with pytest.raises(ValueError, match="not a finite score"):
        QualityWeighted().aggregate({"w": torch.zeros(1)}, _updates([(1.0, 1, {"local_vqa_accuracy": score})]), 1)


def test_keeps_global_dtype_and_checks_keys():
    updates = [ClientUpdate(0, 1, {"w": torch.ones(2, dtype=torch.bfloat16)}, {"local_vqa_accuracy": 1.0})]
    assert QualityWeighted().aggregate({"w": torch.zeros(2, dtype=torch.bfloat16)}, updates, 1)["w"].dtype == torch.bfloat16
    with pytest.raises(Exception, match="missing key"):
        QualityWeighted().aggregate({"w": torch.zeros(2), "b": torch.zeros(1)}, updates, 1)
