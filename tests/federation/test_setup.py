"""What a client tells the server about its data (counts, never rows), and the partition
summary and majority baseline the server rebuilds from them."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from fedumm.data.federated import build_federated_data
from fedumm.errors import DataError
from fedumm.federation.setup import (
    check_stats,
    data_stats,
    partition_from_stats,
    pooled_answer_counts,
    setup_from_replies,
)
from fedumm.metrics import get_task, majority_answer, normalize_answer, vqa_accuracy
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
    # k = 1: every label is shared by >= k rows, nothing is pooled.
    stats = [data_stats(c.train, c.test, config.data, min_label_count=1) for c in data.clients]
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
        data_stats([both, both], [text_only], config.data, {"/srv/site/a.json": 2, "b.json": 1}, min_label_count=1),
        data_stats([both], [], config.data, {}, min_label_count=1),
    ]
    assert stats[0]["skipped_rows_by_file"] == {"a.json": 2, "b.json": 1}  # the folders stay at the site
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


def _rows(answers: list[str]) -> list[dict]:
    return [{"multiple_choice_answer": a, "answer_type": "other", "image": object(), "question": "q?"} for a in answers]


def _reply(**changes) -> dict:
    # A well-formed reply of 12 rows (10 training): label "yes" x 10 named, 2 pooled; all 10 answers pooled.
    config = load_run_config(None, [])
    reply = data_stats(_rows(["yes"] * 9 + ["rare-1"]), _rows(["yes", "rare-2"]), config.data, min_label_count=10)
    return {**reply, **changes}


def test_a_site_whose_answers_are_all_unique_sends_no_answer_text():
    # Prepare: names in free-text answers, each held by one row.
    config = load_run_config(None, [])
    names = [f"Patient Jane Doe {i}" for i in range(30)]
    # Execute
    reply = data_stats(_rows(names[:25]), _rows(names[25:]), config.data, min_label_count=10)
    # Assert
    dump = json.dumps(reply).lower()
    assert not [n for n in names if n.lower() in dump or normalize_answer(n) in dump]
    assert "jane" not in dump
    assert reply["label_counts"] == [] and reply["answer_counts"] == {}
    assert (reply["size"], reply["other_label_count"]) == (30, 30)
    assert (reply["train_size"], reply["other_answer_count"]) == (25, 25)
    check_stats(reply, "site-1", 10)


def test_labels_shared_by_k_rows_are_named_with_their_counts():
    reply = _reply()
    assert reply["label_counts"] == [["yes", 10]] and reply["other_label_count"] == 2
    # Only 9 training rows answer "yes": fewer than k, so no answer is named.
    assert reply["answer_counts"] == {} and reply["other_answer_count"] == 10
    exactly_k = data_stats(_rows(["Yes."] * 5 + ["yes"] * 5), [], load_run_config(None, []).data, min_label_count=10)
    assert exactly_k["answer_counts"] == {"yes": 10}  # normalised before counting: "Yes." and "yes" are one
    assert exactly_k["label_counts"] == [] and exactly_k["other_label_count"] == 10  # the raw labels differ


def test_pooled_other_counts_add_up_and_the_baseline_ignores_them():
    # Prepare: site-1 has "no" x 12 (train) + 3 unique; site-2 "yes" x 10 + "no" x 4 + 2 unique.
    config = load_run_config(None, [])
    stats = [
        data_stats(_rows(["no"] * 12 + ["a1", "a2"]), _rows(["a3"]), config.data, min_label_count=10),
        data_stats(_rows(["yes"] * 10 + ["no"] * 4 + ["b1"]), _rows(["b2"]), config.data, min_label_count=10),
    ]
    # Execute
    setup = setup_from_replies({"site-1": stats[0], "site-2": stats[1]}, ["site-1", "site-2"], 10, by_site=True)
    saved = setup.partition.to_dict()
    # Assert
    assert saved["sizes"] == [15, 16] and saved["labels"] == ["no", "yes"]
    assert saved["label_counts"] == [{"no": 12, "yes": 0}, {"no": 0, "yes": 10}]  # site-2's 4 "no" are pooled
    assert saved["other_label_counts"] == [3, 6] and saved["min_label_count"] == 10
    assert [sum(c.values()) + o for c, o in zip(saved["label_counts"], saved["other_label_counts"])] == [15, 16]
    assert not {"a1", "a2", "a3", "b1", "b2"} & set(json.dumps(saved).replace('"', " ").split())
    # Skew with the pooled rows as one label (global shares: no 12/31, yes 10/31, other 9/31).
    assert saved["skew"] == pytest.approx(
        (
            15 * (0.5 * (12 / 15 - 12 / 31 + 10 / 31 + abs(3 / 15 - 9 / 31)))
            + 16 * (0.5 * (12 / 31 + 10 / 16 - 10 / 31 + abs(6 / 16 - 9 / 31)))
        )
        / 31
    )
    assert setup.answer_counts == {"no": 12, "yes": 10}  # the pooled 7 training rows are not an answer
    assert setup.train_rows == 29
    assert get_task("vqa").baseline(setup.answer_counts, [])[0] == "no"


def test_answer_counts_per_task_are_k_anonymous_each():
    # Prepare: 10 vqa rows "yes", 9 caption rows "a cat" (fewer than k = 10), 10 untagged "no".
    rows = [dict(r, task="vqa") for r in _rows(["Yes"] * 10)] + [dict(r, task="caption") for r in _rows(["a cat"] * 9)]
    config = load_run_config(None, [])

    # Execute
    reply = data_stats(rows + _rows(["no"] * 10), [], config.data, min_label_count=10)
    setup = setup_from_replies({"site-1": reply, "site-2": reply}, ["site-1", "site-2"], 10, by_site=False)

    # Assert: named per task only at >= k rows of that task; "" holds the untagged rows; pooled over sites.
    assert reply["task_answer_counts"] == {"vqa": {"yes": 10}, "": {"no": 10}}
    assert setup.task_answer_counts == {"vqa": {"yes": 20}, "": {"no": 20}}


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"size": -1}, "size", r"-1 is outside \[0, "),
        ({"size": "12"}, "size", "a str where an integer count belongs"),
        ({"size": 12.0}, "size", "a float where an integer count belongs"),
        ({"train_size": 13}, "train_size", r"13 is outside \[0, 12\]"),
        ({"label_counts": [["yes", -10]]}, "label_counts", "-10 is outside"),
        ({"label_counts": [["yes", True]]}, "label_counts", "a bool where an integer count belongs"),
        ({"label_counts": [["yes", 11]]}, "label_counts", "add up to 13, not size 12"),
        ({"label_counts": [["yes", 10], ["no", 10]]}, "label_counts", "add up to 22, not size 12"),
        ({"label_counts": [["yes", 10], ["yes", 0]]}, "label_counts", "entry 1 repeats an earlier value"),
        (
            {"label_counts": [["Jane Doe", 1], ["yes", 9]]},
            "label_counts",
            "entry 0 is held by 1 rows, fewer than engine.min_label_count 10$",
        ),
        ({"label_counts": [[["x"], 10]]}, "label_counts", "entry 0: a list is not a text, a number or null"),
        ({"label_counts": [["yes", 10, 1]]}, "label_counts", r"entry 0 is not a \[value, count\] pair"),
        ({"label_counts": [[f"l{i}", 10] for i in range(10_001)]}, "label_counts", "at most 10000"),
        ({"answer_counts": {f"a{i}": 10 for i in range(10_001)}}, "answer_counts", "10001 answers, more than 10000"),
        ({"answer_counts": [["yes", 9]]}, "answer_counts", "expected {answer: count}"),
        ({"answer_counts": {"x" * 1001: 10}}, "answer_counts", "at most 1000 characters"),
        ({"other_answer_count": 2}, "answer_counts", "add up to 2, not train_size 10"),
        ({"other_label_count": -2}, "other_label_count", "outside"),
        ({"task_answer_counts": [["vqa", {}]]}, "task_answer_counts", "expected at most 100"),
        ({"task_answer_counts": {"vqa": [["yes", 10]]}}, "task_answer_counts", "a task's counts are a list"),
        ({"task_answer_counts": {"vqa": {"Jane Doe": 1}}}, "task_answer_counts", "held by 1 rows, fewer than"),
        ({"task_answer_counts": {"vqa": {"yes": 10}, "": {"no": 10}}}, "task_answer_counts", "20, more than train"),
        ({"task_answer_counts": {f"t{i}": {} for i in range(101)}}, "task_answer_counts", "at most 100"),
        ({"min_label_count": 1}, "min_label_count", "not the job's engine.min_label_count 10"),
        ({"modality_counts": {"image+text": 12}}, "modality_counts", "exactly image\\+text, image, text, none"),
        ({"modality_counts": {"image+text": 11, "image": 0, "text": 0, "none": 0}}, "modality_counts", "not size 12"),
        ({"skipped_rows_by_file": {"/home/jdoe/a.json": 1}}, "skipped_rows_by_file", "a path among the names"),
        ({"skipped_rows_by_file": {"a.json": -1}}, "skipped_rows_by_file", "outside"),
        ({"extra": "Jane Doe"}, "extra", "not a setup field"),
        ({"Jane Doe's diagnosis": 1}, r"\?", "not a setup field"),
        ({"label_counts": [[float("nan"), 10], ["yes", 0]]}, "label_counts", "entry 0: nan is not a finite number"),
    ],
)
def test_malformed_replies_fail_naming_the_site_and_the_field(changes, field, problem):
    reply = _reply(**changes)
    with pytest.raises(DataError, match=rf"^site site-2: setup reply field '{field}': .*{problem}") as caught:
        setup_from_replies({"site-1": _reply(), "site-2": reply}, ["site-1", "site-2"], 10, by_site=True)
    assert "\n" not in str(caught.value) and "Jane" not in str(caught.value) and "jdoe" not in str(caught.value)


def test_missing_fields_and_replies_are_named():
    reply = _reply()
    del reply["answer_counts"]
    with pytest.raises(DataError, match="^site site-1: setup reply field 'answer_counts': missing$"):
        check_stats(reply, "site-1", 10)
    with pytest.raises(DataError, match="^site site-1: setup reply is a list"):
        check_stats([1, 2], "site-1", 10)
    with pytest.raises(DataError, match="^site site-2: no setup reply$"):
        setup_from_replies({"site-1": _reply()}, ["site-1", "site-2"], 10, by_site=False)


def test_huge_claims_cost_only_their_distinct_labels():
    # A 2-million-row claim over one label, and a claim of 2 million distinct answers.
    modalities = {"image+text": 2_000_000, "image": 0, "text": 0, "none": 0}
    big = _reply(
        size=2_000_000,
        train_size=2_000_000,
        label_counts=[["yes", 2_000_000]],
        other_label_count=0,
        answer_counts={"yes": 1_999_990},
        other_answer_count=10,
        modality_counts=modalities,
    )
    many = _reply(answer_counts={str(i): 10 for i in range(2_000_000)})
    tracemalloc.start()
    start = time.perf_counter()
    setup = setup_from_replies({"site-1": big}, ["site-1"], 10, by_site=False)
    with pytest.raises(DataError, match="site site-1: setup reply field 'answer_counts': 2000000 answers"):
        check_stats(many, "site-1", 10)
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 1_000_000
    assert setup.train_rows == 2_000_000 and setup.answer_counts == {"yes": 1_999_990}
    assert get_task("vqa").baseline(setup.answer_counts, []) == ("yes", 0.0)
