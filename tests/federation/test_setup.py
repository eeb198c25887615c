"""What a client tells the server about its data (counts, never rows), and the partition
summary and majority baseline the server rebuilds from them."""

from __future__ import annotations

from fedumm.data.federated import build_federated_data
from fedumm.federation.setup import data_stats, partition_from_stats, pooled_answer_counts
from fedumm.metrics import get_task, majority_answer, vqa_accuracy
from fedumm.validation import load_run_config


def test_server_rebuilds_partition_and_majority_from_client_counts():
    config = load_run_config(
        None,
        [
            "federation.num_clients=3",
            "data.synthetic.train_samples=90",
            "data.synthetic.test_samples=20",
            "data.partition.min_samples=4",
        ],
    )
    data = build_federated_data(config.data, 3, config.seed)
    stats = [data_stats(c.train, c.test, config.data) for c in data.clients]
    assert partition_from_stats(stats).to_dict() == data.partition.to_dict()
    # The baseline from pooled counts is the one over the pooled training rows.
    answer = majority_answer(row["multiple_choice_answer"] for row in data.pooled_train)
    score = sum(vqa_accuracy(answer, row["answers"]) for row in data.global_test) / len(data.global_test)
    assert get_task("vqa").baseline(pooled_answer_counts(stats), data.global_test) == (answer, score)


def test_server_reports_sites_skipped_rows_and_modalities():
    # Prepare: two sites' counts, one with a text-only row and broken rows skipped in two files.
    both = {"multiple_choice_answer": "yes", "answer_type": "yes/no", "image": object(), "question": "q?"}
    text_only = dict(both, image=None)
    config = load_run_config(None, [])
    stats = [
        data_stats([both, both], [text_only], config.data, {"a.json": 2, "b.json": 1}),
        data_stats([both], [], config.data, {}),
    ]
    # Execute
    by_site = partition_from_stats(stats, ["site-1", "site-2"])
    shared = partition_from_stats([stats[0], stats[0]])  # partition placement: same skips everywhere
    # Assert
    assert by_site.skipped_summary() == {
        "skipped_rows": 3,
        "skipped_rows_by_file": {"site-1: a.json": 2, "site-1: b.json": 1},
    }
    assert shared.skipped_summary() == {"skipped_rows": 3, "skipped_rows_by_file": {"a.json": 2, "b.json": 1}}
    assert by_site.to_dict()["modality_counts"][0]["text"] == 1
    assert by_site.to_dict()["modality_counts"][1]["text"] == 0
