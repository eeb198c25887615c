"""Tests for the fedumm.metrics registry: lookup, registration and each task's attributes."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import pytest

from fedumm.errors import ConfigError
from fedumm.metrics import TASKS, Task, get_task, register_task, summarize_task


def test_tasks_in_registration_order() -> None:
    assert list(TASKS) == ["vqa", "classification", "caption", "t2i", "grounding"]
    assert all(get_task(name) is task and task.name == name for name, task in TASKS.items())


@pytest.mark.parametrize(
    ("name", "primary_metric", "bounded", "scores_choices"),
    [
        ("vqa", "vqa_accuracy", True, False),
        ("classification", "accuracy", True, True),
        ("caption", "cider_d", False, False),
        ("t2i", "geneval_overall", True, False),
    ],
)
def test_task_attributes(name: str, primary_metric: str, bounded: bool, scores_choices: bool) -> None:
    task = get_task(name)
    assert (task.primary_metric, task.bounded, task.scores_choices) == (primary_metric, bounded, scores_choices)


def test_get_task_unknown_name() -> None:
    with pytest.raises(ConfigError) as info:
        get_task("x")
    assert str(info.value) == "eval.task: unknown task 'x'; available: caption, classification, grounding, t2i, vqa"


def test_summarize_task_unknown_name() -> None:
    with pytest.raises(ConfigError, match="eval.task: unknown task 'detection'"):
        summarize_task([{"prediction": "a", "label": "a"}], "detection")


def test_registering_a_name_twice_fails() -> None:
    # Prepare
    before = dict(TASKS)
    duplicate = Task("vqa", "exact_match", get_task("classification").metrics)
    # Execute / Assert: refused, and the registered task is untouched.
    with pytest.raises(ValueError, match="'vqa' is already registered"):
        register_task(duplicate)
    assert TASKS == before


def test_register_task_adds_a_new_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a registry copy, so the module's TASKS stays as it was.
    monkeypatch.setattr("fedumm.metrics.TASKS", dict(TASKS))
    task = Task("length", "mean_length", lambda records, positive_label: {"mean_length": 1.0})
    # Execute
    register_task(task)
    # Assert
    assert get_task("length") is task
    assert get_task("length").summarize([{"prediction": "a"}]) == {"task": "length", "n": 1, "mean_length": 1.0}


def test_task_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("vqa").primary_metric = "exact_match"  # type: ignore[misc]


def test_import_loads_no_heavy_library_and_no_other_fedumm_module() -> None:
    # Prepare: a fresh interpreter, since this one has loaded everything already.
    code = (
        "import fedumm.metrics, sys; "
        "print(sorted(m for m in sys.modules if m.startswith(('fedumm', 'sklearn', 'pycocoevalcap', 'rouge_score'))))"
    )
    # Execute
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Assert
    loaded = ast.literal_eval(out)
    assert [m for m in loaded if m not in ("fedumm", "fedumm.errors") and not m.startswith("fedumm.metrics")] == []


def test_multitask_is_not_a_task_name() -> None:
    with pytest.raises(ValueError, match="'multitask' is the eval.task of runs that mix tasks"):
        register_task(Task("multitask", "x", lambda records, options: {"x": 0.0}))
