"""Task metrics and the task registry: ``get_task(name)`` gives a ``Task`` (metrics, primary metric, baseline).

To add a task: write ``metrics/<task>.py`` with ``metrics(records, options) -> dict`` (one
group's metrics; ``options``: ``MetricOptions``) and, if the task has a majority-answer
baseline, ``baseline(answer, test_rows) -> float``; then add one ``register_task(Task(...))``
line below. A task that does not score generated text gives ``Task(make_records=...)``: how
the model host turns its rows into records.

A run scores through one ``Evaluation`` (``build_evaluation``; ``metrics/multitask.py``): one
task, or ``multitask`` (each row by its own task, combined by weighted mean).

Heavy metric libraries (scikit-learn, pycocoevalcap, rouge-score, scipy) are imported only by the
functions that use them, so importing this package is cheap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from fedumm.errors import ConfigError
from fedumm.metrics import caption, classification, geneval, grounding, vqa
from fedumm.metrics.base import EvalHost, MetricOptions, Task, majority_answer, predict_records
from fedumm.metrics.classification import accuracy
from fedumm.metrics.multitask import MULTITASK, MULTITASK_METRIC, Evaluation
from fedumm.metrics.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "MULTITASK",
    "MULTITASK_METRIC",
    "TASKS",
    "EvalHost",
    "Evaluation",
    "MetricOptions",
    "Task",
    "accuracy",
    "build_evaluation",
    "get_task",
    "majority_answer",
    "normalize_answer",
    "predict_records",
    "primary_metric_of",
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
    if task.name == MULTITASK:
        raise ValueError(f"{MULTITASK!r} is the eval.task of runs that mix tasks; a task cannot take that name")
    TASKS[task.name] = task
    return task


register_task(Task("vqa", "vqa_accuracy", vqa.metrics, vqa.baseline))
register_task(Task("classification", "accuracy", classification.metrics, classification.baseline, scores_choices=True))
register_task(Task("caption", "cider_d", caption.metrics, bounded=False))
# Text-to-image: the host generates an image per prompt and the checker scores it (geneval.t2i_records);
# no majority baseline.
#: The text-to-image task's name.
T2I_TASK = "t2i"
register_task(Task(T2I_TASK, geneval.T2I_METRICS[0], geneval.metrics, make_records=geneval.t2i_records))
register_task(Task("grounding", "grounding_accuracy", grounding.metrics))


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the available ones.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"eval.task: unknown task {name!r}; available: {', '.join(sorted(TASKS))}") from None


def summarize_task(
    records: Iterable[Mapping], task_name: str, positive_label: str = "yes", **options: Any
) -> dict[str, Any]:
    """``get_task(task_name).summarize(records, MetricOptions(positive_label, **options))``."""
    return get_task(task_name).summarize(records, MetricOptions(positive_label=positive_label, **options))


def primary_metric_of(task_name: str) -> str:
    """The primary metric of ``eval.task`` (``multitask``: ``multitask_score``)."""
    return MULTITASK_METRIC if task_name == MULTITASK else get_task(task_name).primary_metric


def build_evaluation(
    task: str,
    task_weights: Mapping[str, float] | None = None,
    default_task: str | None = None,
    options: MetricOptions | None = None,
    t2i_metric: str = geneval.T2I_METRICS[0],
) -> Evaluation:
    """The run's ``Evaluation`` from ``eval.task``, ``eval.task_weights``, ``eval.default_task``
    and ``eval.t2i_metric`` (the t2i task's primary metric in this run, one of
    ``geneval.T2I_METRICS``; the registered task's otherwise).

    One task: rows are scored by it (``default_task`` may only name it; no weights).
    ``multitask``: the tasks of ``task_weights`` (default: every registered task, weight 1);
    rows without a ``task`` column take ``default_task`` (None: such a row is an error).

    Raises:
        ConfigError: naming the key, for an unknown task, a weight that is not a positive
            finite number, a setting that only a multitask run takes, or an unknown t2i metric.
    """
    if t2i_metric not in geneval.T2I_METRICS:
        raise ConfigError(f"eval.t2i_metric: {t2i_metric!r}; expected one of {', '.join(geneval.T2I_METRICS)}")

    def chosen(name: str) -> Task:
        found = get_task(name)
        return dataclasses.replace(found, primary_metric=t2i_metric) if name == T2I_TASK else found

    if task != MULTITASK:
        get_task(task)
        if task_weights is not None:
            raise ConfigError(f"eval.task_weights: only with eval.task: {MULTITASK} (eval.task is {task!r})")
        if default_task not in (None, task):
            raise ConfigError(
                f"eval.default_task: {default_task!r} differs from eval.task {task!r}; a single-task run scores "
                f"every row by eval.task (use eval.task: {MULTITASK} to mix tasks)"
            )
        return Evaluation(task, {task: chosen(task)}, {task: 1.0}, task, options or MetricOptions())
    weights = dict(task_weights) if task_weights is not None else dict.fromkeys(TASKS, 1.0)
    if not weights:
        raise ConfigError("eval.task_weights: empty; name at least one task with its weight")
    for name, weight in weights.items():
        if name not in TASKS:
            raise ConfigError(f"eval.task_weights: unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"eval.task_weights.{name}: {weight!r}; expected a positive finite number")
    if default_task is not None and default_task not in weights:
        raise ConfigError(f"eval.default_task: {default_task!r} is not one of the run's tasks ({', '.join(weights)})")
    tasks = {name: chosen(name) for name in weights}
    return Evaluation(
        MULTITASK, tasks, {k: float(v) for k, v in weights.items()}, default_task, options or MetricOptions()
    )
