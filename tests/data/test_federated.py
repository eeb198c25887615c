import pytest

from fedumm.config import DataConfig
from fedumm.data.federated import build_federated_data, split_local_test
from fedumm.errors import DataError


@pytest.mark.parametrize(("n", "fraction", "expected_test"), [(10, 0.2, 2), (10, 0.0, 0), (1, 0.5, 0), (3, 0.9, 2)])
def test_split_local_test_sizes(n, fraction, expected_test):
    rows = [{"i": i} for i in range(n)]
    train, test = split_local_test(rows, fraction, seed=0)
    assert len(test) == expected_test and len(train) == n - expected_test
    assert sorted(r["i"] for r in train + test) == list(range(n))


def test_build_federated_data_covers_all_rows_once():
    config = DataConfig.model_validate(
        {"synthetic": {"train_samples": 200, "test_samples": 20}, "partition": {"alpha": 0.5, "min_samples": 10}}
    )
    data = build_federated_data(config, num_clients=4, seed=0)
    ids = [r["question_id"] for c in data.clients for r in c.train + c.test]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert sum(data.partition.sizes) == 200 and min(data.partition.sizes) >= 10
    for client in data.clients:
        total = len(client.train) + len(client.test)
        assert len(client.test) == round(0.2 * total)
    assert len(data.global_test) == 20 and len(data.pooled_train) == sum(len(c.train) for c in data.clients)


def test_unknown_label_column_names_it():
    config = DataConfig.model_validate({"synthetic": {"train_samples": 20}, "partition": {"label_column": "site"}})
    with pytest.raises(DataError, match="data.partition.label_column: column 'site'"):
        build_federated_data(config, num_clients=2, seed=0)
