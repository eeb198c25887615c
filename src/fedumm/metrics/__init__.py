"""Task metrics and the task registry: ``get_task(name)`` gives a ``Task`` (metrics, primary metric, baseline).

To add a task: write ``metrics/<task>.py`` with ``metrics(records, positive_label) -> dict`` (one
group's metrics) and, if the task has a majority-answer baseline, ``baseline(answer,
test_rows) -> float``; then add one ``register_task(Task(...))`` line below.

Heavy metric libraries (scikit-learn, pycocoevalcap, rouge-score, scipy) are imported only by the
functions that use them, so importing this package is cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedumm.errors import ConfigError
from fedumm.metrics import caption, classification, geneval, vqa
from fedumm.metrics.base import Task, majority_answer
from fedumm.metrics.classification import accuracy
from fedumm.metrics.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "TASKS",
    "Task",
    "accuracy",
    "get_task",
    "majority_answer",
    "normalize_answer",
    "register_task",
    "summarize_task",
    "vqa_accuracy",
]

#: Registered tasks by name, in registration order.
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to ``TASKS``; a name registered twice is a ValueError (a second task would shadow the first)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


register_task(Task("vqa", "vqa_accuracy", vqa.metrics, vqa.baseline))
register_task(Task("classification", "accuracy", classification.metrics, classification.baseline, scores_choices=True))
register_task(Task("caption", "cider_d", caption.metrics, bounded=False))
# Text-to-image: records are per-image checker verdicts (geneval.geneval_records); no majority baseline.
register_task(Task("t2i", "geneval_overall", geneval.metrics))


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the available ones.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"eval.task: unknown task {name!r}; available: {', '.join(sorted(TASKS))}") from None


def summarize_task(records: Iterable[Mapping], task_name: str, positive_label: str = "yes") -> dict[str, Any]:
    """``get_task(task_name).summarize(records, positive_label)``."""
    return get_task(task_name).summarize(records, positive_label)
