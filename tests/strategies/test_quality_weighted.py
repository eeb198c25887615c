import pytest
import torch

from fedumm.errors import ConfigError
from fedumm.strategies import ClientUpdate, FedAvg
from fedumm.strategies.quality_weighted import QualityWeighted, QualityWeightedParams, quality_weights


def _qw(**params):
    return QualityWeighted(QualityWeightedParams(metric="local_vqa_accuracy", **params))


def _updates(rows):
    """rows: [(value of 'w', num_samples, metrics)]"""
    return [ClientUpdate(i, n, {"w": torch.tensor([w])}, metrics) for i, (w, n, metrics) in enumerate(rows)]


def test_weights_are_sample_share_times_score_renormalised():
    # Prepare: n = 10, 20, 40; q = 0.6, 0.3, 0.0 (floored to epsilon = 0.05)
    updates = _updates(
        [
            (7.0, 10, {"local_vqa_accuracy": 0.6}),
            (0.0, 20, {"local_vqa_accuracy": 0.3}),
            (14.0, 40, {"local_vqa_accuracy": 0.0}),
        ]
    )
    strategy = _qw(epsilon=0.05)
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
    new = _qw().aggregate({"w": torch.zeros(1)}, updates, 1)
    assert new["w"].item() == pytest.approx((1 * 1 + 3 * 4) / 4)  # 3.25, as FedAvg


def test_metric_name_is_configurable():
    updates = _updates([(2.0, 1, {"f1": 0.75}), (6.0, 1, {"f1": 0.25})])
    new = QualityWeighted(QualityWeightedParams(metric="f1")).aggregate({"w": torch.zeros(1)}, updates, 1)
    assert new["w"].item() == pytest.approx(0.75 * 2 + 0.25 * 6)  # 3.0


def test_missing_metric_says_to_enable_client_evaluation():
    updates = _updates([(1.0, 1, {"local_vqa_accuracy": 0.5}), (2.0, 1, {"train_loss": 0.3})])
    with pytest.raises(ConfigError, match=r"client 1 reported no 'local_vqa_accuracy'.*eval\.clients=true"):
        _qw(missing_score="error").aggregate({"w": torch.zeros(1)}, updates, 1)


@pytest.mark.parametrize("score", [-0.1, float("nan")])
def test_invalid_scores_rejected(score):
    with pytest.raises(ValueError, match="not a finite score"):
        _qw().aggregate({"w": torch.zeros(1)}, _updates([(1.0, 1, {"local_vqa_accuracy": score})]), 1)


def test_keeps_global_dtype_and_checks_keys():
    updates = [ClientUpdate(0, 1, {"w": torch.ones(2, dtype=torch.bfloat16)}, {"local_vqa_accuracy": 1.0})]
    assert _qw().aggregate({"w": torch.zeros(2, dtype=torch.bfloat16)}, updates, 1)["w"].dtype == torch.bfloat16
    with pytest.raises(Exception, match="missing key"):
        _qw().aggregate({"w": torch.zeros(2), "b": torch.zeros(1)}, updates, 1)


def test_client_without_a_score_gets_the_mean_of_the_others():
    # Prepare: client 2 has no local test split, so no score; q = 0.6, 0.2 -> its q = 0.4
    updates = _updates(
        [(10.0, 1, {"local_vqa_accuracy": 0.6}), (0.0, 1, {"local_vqa_accuracy": 0.2}), (5.0, 2, {"train_loss": 1.0})]
    )
    # Execute
    weights = quality_weights(updates, "local_vqa_accuracy", 0.01, missing_score="mean")
    new = _qw().aggregate({"w": torch.zeros(1)}, updates, 1)
    # Assert: n*q = 0.6, 0.2, 2*0.4 = 0.8 (sum 1.6) -> w = 3/8, 1/8, 1/2; θ = 3.75 + 0 + 2.5
    assert weights == pytest.approx([0.375, 0.125, 0.5])
    assert new["w"].item() == pytest.approx(6.25)
    # No client scored: q = 1 for all, i.e. sample weighting (1*10 + 1*0 + 2*5) / 4 = 5
    unscored = _updates([(10.0, 1, {}), (0.0, 1, {}), (5.0, 2, {})])
    assert _qw().aggregate({"w": torch.zeros(1)}, unscored, 1)["w"].item() == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("task", "metric"),
    [("vqa", "local_vqa_accuracy"), ("classification", "local_accuracy"), ("caption", "local_cider_d")],
)
def test_default_metric_follows_the_task(task, metric):
    from fedumm.strategies import build_strategy
    from fedumm.validation import load_run_config

    config = load_run_config(None, ["federation.strategy.name=quality_weighted", f"eval.task={task}"])
    strategy = build_strategy(config.federation.strategy, num_clients=4, task=config.eval.task)
    assert strategy.params.metric == metric
    # A classification client's score is read under its own name: weights 3/4, 1/4 -> θ = 3 * 0.75 + 7 * 0.25
    updates = _updates([(3.0, 1, {metric: 0.75}), (7.0, 1, {metric: 0.25})])
    assert strategy.aggregate({"w": torch.zeros(1)}, updates, 1)["w"].item() == pytest.approx(4.0)
    # An explicit metric is kept.
    explicit = load_run_config(
        None, ["federation.strategy.name=quality_weighted", "federation.strategy.metric=f1", f"eval.task={task}"]
    )
    assert build_strategy(explicit.federation.strategy, 4, task=task).params.metric == "f1"


def test_unresolved_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="federation.strategy.metric is null and the task is unknown"):
        QualityWeighted().aggregate({"w": torch.zeros(1)}, _updates([(1.0, 1, {"local_vqa_accuracy": 1.0})]), 1)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("eval.clients=false", "eval.clients: federation.strategy.name=quality_weighted weights clients"),
        ("data.local_test_fraction=0", "data.local_test_fraction: federation.strategy.name=quality_weighted needs"),
    ],
)
def test_config_without_client_scores_fails_before_anything_loads(override, fragment):
    from fedumm.validation import load_run_config

    with pytest.raises(ConfigError, match=fragment):
        load_run_config(None, ["federation.strategy.name=quality_weighted", override])
