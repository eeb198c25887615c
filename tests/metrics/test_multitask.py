"""Tests for fedumm.metrics.multitask: rows scored by their own task, by_task, the weighted score."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fedumm.errors import ConfigError, DataError
from fedumm.metrics import MULTITASK_METRIC, Task, build_evaluation, predict_records
from fedumm.metrics.multitask import weighted_score


class ScriptedHost:
    """An ``EvalHost`` answering each row with its "says" field (what a model would generate)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, rows: Sequence[dict], batch_size: int) -> list[str]:
        self.calls.append(len(rows))
        return [row["says"] for row in rows]

    def positive_scores(self, rows: Sequence[dict], batch_size: int) -> list[float] | None:
        return None


def _vqa(says: str, answers: list[str], **extra: object) -> dict:
    return {"task": "vqa", "says": says, "answers": answers, "multiple_choice_answer": answers[0], **extra}


def _box(says: str, box: str, **extra: object) -> dict:
    return {"task": "grounding", "says": says, "answers": [box], "multiple_choice_answer": box, **extra}


def test_each_row_is_scored_by_its_own_task_and_the_score_is_the_weighted_mean() -> None:
    # Prepare: vqa rows score 1 and 0 (mean 0.5); grounding rows: IoU 1 and 1/7 (accuracy 0.5,
    # mean IoU 4/7). Weights vqa 1, grounding 3: (1 * 0.5 + 3 * 0.5) / 4 = 0.5; with the
    # grounding rows' accuracy changed to 1 (second box identical): (0.5 + 3) / 4 = 0.875.
    rows = [
        _vqa("yes", ["yes"]),
        _box("[0, 0, 1, 1]", "[0, 0, 1, 1]"),
        _vqa("no", ["yes"]),
        _box("[0, 0, 0.2, 0.2]", "[0.1, 0.1, 0.3, 0.3]"),
    ]
    evaluation = build_evaluation("multitask", {"vqa": 1, "grounding": 3})
    host = ScriptedHost()

    # Execute
    summary = evaluation.evaluate(host, rows, batch_size=8)

    # Assert
    assert host.calls == [2, 2]  # one call per task's rows
    assert summary["task"] == "multitask" and summary["n"] == 4
    assert summary["by_task"]["vqa"] == {"n": 2, "vqa_accuracy": 0.5, "exact_match": 0.5}
    assert summary["by_task"]["grounding"]["grounding_accuracy"] == 0.5
    assert summary["by_task"]["grounding"]["mean_iou"] == pytest.approx((1 + 1 / 7) / 2)
    assert summary[MULTITASK_METRIC] == pytest.approx(0.5)
    rows[3] = _box("[0.1, 0.1, 0.3, 0.3]", "[0.1, 0.1, 0.3, 0.3]")
    assert evaluation.evaluate(host, rows, 8)[MULTITASK_METRIC] == pytest.approx(0.875)


def test_default_task_and_per_client_scores() -> None:
    # Prepare: rows without a task column take eval.default_task (vqa). Client 0 holds a vqa
    # row (1.0) and a grounding row (accuracy 0); client 1 only a vqa row (0.0). Equal weights:
    # client 0 (1 + 0) / 2 = 0.5; client 1 0.0 (only its own task counts).
    rows = [
        {"says": "two", "answers": ["2"], "multiple_choice_answer": "2", "client_id": 0},
        _box("no idea", "[0, 0, 1, 1]", client_id=0),
        {"says": "red", "answers": ["blue"], "multiple_choice_answer": "blue", "client_id": 1},
    ]
    evaluation = build_evaluation("multitask", {"vqa": 1, "grounding": 1}, default_task="vqa")

    # Execute
    summary = evaluation.evaluate(ScriptedHost(), rows, 4)

    # Assert: vqa 0.5 over its two rows, grounding 0 -> 0.25 overall.
    assert summary[MULTITASK_METRIC] == pytest.approx(0.25)
    assert summary["by_task"]["grounding"]["unparsable"] == 1
    assert summary["by_client"] == {0: {"n": 2, MULTITASK_METRIC: 0.5}, 1: {"n": 1, MULTITASK_METRIC: 0.0}}


def test_single_task_run_gives_the_task_summary_unchanged() -> None:
    # Prepare: the same code path with one task; rows without a task column take it.
    rows = [{"says": "2", "answers": ["2", "two", "3"], "multiple_choice_answer": "2"}]
    evaluation = build_evaluation("vqa")

    # Execute
    summary = evaluation.evaluate(ScriptedHost(), rows, 1)

    # Assert: leave-one-out over 3 answers with 2 matches: (1/3 + 1/3 + 2/3) / 3 = 4/9.
    assert summary == {"task": "vqa", "n": 1, "vqa_accuracy": pytest.approx(4 / 9), "exact_match": 1.0}
    assert evaluation.primary_metric == "vqa_accuracy" and "by_task" not in summary


def test_no_rows_score_zero() -> None:
    evaluation = build_evaluation("multitask")
    assert evaluation.evaluate(ScriptedHost(), [], 4) == {"task": "multitask", "n": 0, MULTITASK_METRIC: 0.0}


def test_unbounded_task_makes_the_score_unbounded() -> None:
    assert build_evaluation("multitask", {"vqa": 1, "grounding": 1}).bounded
    assert not build_evaluation("multitask", {"vqa": 1, "caption": 1}).bounded
    assert weighted_score({"vqa": 0.5, "caption": 1.5}, {"vqa": 1, "caption": 1}) == pytest.approx(1.0)


def test_a_task_with_its_own_records() -> None:
    # Prepare: a task that is not text generation brings make_records (here: the length of
    # each row's "says", standing in for e.g. a score of a generated image).
    def lengths(task: Task, host: object, rows: Sequence[dict], batch_size: int) -> list[dict]:
        return [dict(row, length=len(row["says"])) for row in rows]

    def mean_length(records: Sequence[dict], options: object) -> dict:
        return {"mean_length": sum(r["length"] for r in records) / len(records)}

    task = Task("length", "mean_length", mean_length, make_records=lengths)
    default = Task("echo", "mean_length", mean_length)

    # Execute / Assert: 2 and 4 characters -> 3; the default task path generates text.
    assert task.evaluate(ScriptedHost(), [{"says": "ab"}, {"says": "abcd"}], 1, None)["mean_length"] == 3.0
    assert predict_records(default, ScriptedHost(), [{"says": "x"}], 1) == [{"says": "x", "prediction": "x"}]


@pytest.mark.parametrize(
    ("rows", "kwargs", "fragment"),
    [
        ([{"says": "a", "answers": ["a"], "multiple_choice_answer": "a"}], {}, "test row 0 (0-based) has no 'task'"),
        (
            [_vqa("a", ["a"]), {"task": "caption", "says": "a", "answers": ["a"], "client_id": 3}],
            {"task_weights": {"vqa": 1}},
            "test row 1 (0-based) of client 3: task 'caption' is not scored in this run",
        ),
    ],
)
def test_rows_with_a_missing_or_foreign_task_are_refused(rows: list[dict], kwargs: dict, fragment: str) -> None:
    evaluation = build_evaluation("multitask", **kwargs)
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        evaluation.evaluate(ScriptedHost(), rows, 1)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("vqa", {"vqa": 1}), "eval.task_weights: only with eval.task: multitask"),
        (("vqa", None, "caption"), "eval.default_task: 'caption' differs from eval.task 'vqa'"),
        (("multitask", {"detection": 1}), "eval.task_weights: unknown task 'detection'"),
        (("multitask", {"vqa": 0}), "eval.task_weights.vqa: 0"),
        (("multitask", {"vqa": float("nan")}), "eval.task_weights.vqa: nan"),
        (("multitask", {}), "eval.task_weights: empty"),
        (("multitask", {"vqa": 1}, "caption"), "eval.default_task: 'caption' is not one of the run's tasks (vqa)"),
    ],
)
def test_bad_settings_name_the_key(args: tuple, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_evaluation(*args)


def test_single_task_run_refuses_a_row_of_another_task() -> None:
    # Prepare: a classification-tagged row (Hateful Memes rows carry task: classification) in a vqa run.
    rows = [{"task": "classification", "says": "yes", "answers": ["yes"], "multiple_choice_answer": "yes"}]

    # Execute / Assert
    with pytest.raises(DataError, match="test row 0 \\(0-based\\): task 'classification' is not scored in this run"):
        build_evaluation("vqa").evaluate(ScriptedHost(), rows, 1)


def test_majority_baseline_per_task() -> None:
    # Prepare: training answers per task; untagged rows ("") count for the default task (vqa).
    # vqa: "yes" 3 + 4 untagged "no" -> "no"; classification: "cat" 5, "dog" 2 -> "cat".
    counts = {"vqa": {"yes": 3}, "": {"no": 4}, "classification": {"cat": 5, "dog": 2}, "caption": {"a cat": 9}}
    test = [
        _vqa("-", ["no", "no", "yes"]),  # "no": 2 of 3 -> (1/3 + 1/3 + 2/3) / 3 = 4/9
        {"says": "-", "answers": ["yes"], "multiple_choice_answer": "yes"},  # untagged -> vqa; "no" scores 0
        {"task": "classification", "says": "-", "answers": ["cat"], "multiple_choice_answer": "cat"},
        {"task": "classification", "says": "-", "answers": ["dog"], "multiple_choice_answer": "dog"},
        {"task": "caption", "says": "-", "answers": ["a cat"], "multiple_choice_answer": "a cat"},
    ]
    evaluation = build_evaluation("multitask", {"vqa": 1, "classification": 1, "caption": 1}, default_task="vqa")

    # Execute
    baselines = evaluation.task_baselines(counts, test)

    # Assert: caption has no majority baseline.
    assert baselines == {
        "vqa": {"answer": "no", "score": pytest.approx((4 / 9 + 0) / 2)},
        "classification": {"answer": "cat", "score": 0.5},
    }
    assert build_evaluation("vqa").task_baselines(counts, test) == {}
