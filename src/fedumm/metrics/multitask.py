"""What a run scores: one task, or several tasks in one data set, each row by its own task.

Every evaluation (global and clients' local, single task or multitask) goes through
``Evaluation.evaluate``: the rows are grouped by their ``task`` column (rows without one take
``default_task``), each group is evaluated by its task (``Task.evaluate``: by default generate
answers, then the task's metrics) and the parts are combined. With one task (``eval.task`` a
task's name) the combined summary is that task's summary, unchanged. With ``eval.task:
multitask`` it is::

    {"task": "multitask", "n", "multitask_score", "by_task": {task: {"n", <its metrics>, ...}},
     "by_client"?: {client: {"n", "multitask_score"}}}

``multitask_score`` is the weighted mean of the tasks' primary metrics (FedVLMBench, Zhang
et al. 2025, arXiv:2506.09638, reports each task of a multitask set by its own metric; the
mean is the one number a run optimises and plots):

    score = sum_t w_t * m_t / sum_t w_t   over the tasks t present in the rows scored,

so a client whose test split lacks a task is scored on the tasks it has. Unbounded primary
metrics (CIDEr-D, about 0..10) enter as they are: the score is then not a fraction of 1
(``bounded`` false), and ``eval.task_weights`` is the place to scale such a task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from fedumm.errors import DataError
from fedumm.metrics.base import EvalHost, MetricOptions, Task

__all__ = ["MULTITASK", "MULTITASK_METRIC", "Evaluation", "weighted_score"]

#: The ``eval.task`` value of a multitask run, and its primary metric.
MULTITASK = "multitask"
MULTITASK_METRIC = "multitask_score"


def weighted_score(primary: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """``sum_t w_t m_t / sum_t w_t`` over the tasks in ``primary`` (each must have a weight > 0)."""
    total = sum(weights[t] for t in primary)
    return sum(weights[t] * float(m) for t, m in primary.items()) / total


@dataclass(frozen=True)
class Evaluation:
    """The run's tasks, their weights and metric options; evaluates and combines.

    Attributes:
        name: ``eval.task``: a task's name, or ``multitask``.
        tasks: the tasks rows may name, with their weights (one task: weight 1).
        default_task: the task of rows without a ``task`` column (None: such a row is an error).
        options: the metric settings (positive label, box format).
    """

    name: str
    tasks: Mapping[str, Task]
    weights: Mapping[str, float]
    default_task: str | None
    options: MetricOptions = field(default_factory=MetricOptions)

    @property
    def multitask(self) -> bool:
        return self.name == MULTITASK

    @property
    def primary_metric(self) -> str:
        return MULTITASK_METRIC if self.multitask else self.tasks[self.name].primary_metric

    @property
    def bounded(self) -> bool:
        """True when the primary metric is a fraction of 1 (multitask: every task's is)."""
        return all(t.bounded for t in self.tasks.values())

    def task_of(self, row: Mapping, index: int) -> str:
        """The row's task (``default_task`` when it has none).

        Raises:
            DataError: naming the row, for a task outside this run's tasks or none at all.
        """
        name = row.get("task") or self.default_task
        where = f"test row {index} (0-based)" + (f" of client {row['client_id']}" if "client_id" in row else "")
        if name is None:
            raise DataError(f"{where} has no 'task' column and eval.default_task is not set")
        if name not in self.tasks:
            fix = "add it to eval.task_weights" if self.multitask else f"set eval.task: {MULTITASK} (or {name})"
            raise DataError(
                f"{where}: task {name!r} is not scored in this run (eval.task={self.name!r}; "
                f"tasks: {', '.join(self.tasks)}); {fix}"
            )
        return str(name)

    def split(self, rows: Sequence[dict]) -> dict[str, list[dict]]:
        """The rows by task, in the order of ``tasks``."""
        groups: dict[str, list[dict]] = {name: [] for name in self.tasks}
        for i, row in enumerate(rows):
            groups[self.task_of(row, i)].append(row)
        return {name: group for name, group in groups.items() if group}

    def evaluate(
        self,
        host: EvalHost,
        rows: Sequence[dict],
        batch_size: int,
        scope: Callable[[str], AbstractContextManager] | None = None,
    ) -> dict[str, Any]:
        """Each task's rows evaluated by their task, combined (module docstring); no rows: n 0, score 0.
        ``scope(task)``, when given, is entered around each task's evaluation (per-task adapters:
        the host runs the task's own adapter)."""
        parts = {}
        for name, group in self.split(rows).items():
            with scope(name) if scope is not None else nullcontext():
                parts[name] = self.tasks[name].evaluate(host, group, batch_size, self.options)
        return self.combine(parts)

    def combine(self, parts: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """One summary from the tasks' summaries (module docstring)."""
        if not parts:
            return {"task": self.name, "n": 0, self.primary_metric: 0.0}
        if not self.multitask:
            return dict(parts[self.name])
        primary = {name: part[self.tasks[name].primary_metric] for name, part in parts.items()}
        out: dict[str, Any] = {
            "task": self.name,
            "n": sum(part["n"] for part in parts.values()),
            MULTITASK_METRIC: weighted_score(primary, self.weights),
            "by_task": {name: {k: v for k, v in part.items() if k != "task"} for name, part in parts.items()},
        }
        clients: dict[Any, dict[str, dict]] = {}
        for name, part in parts.items():
            for client, metrics in part.get("by_client", {}).items():
                clients.setdefault(client, {})[name] = metrics
        if clients:
            out["by_client"] = {
                client: {
                    "n": sum(m["n"] for m in by_task.values()),
                    MULTITASK_METRIC: weighted_score(
                        {t: m[self.tasks[t].primary_metric] for t, m in by_task.items()}, self.weights
                    ),
                }
                for client, by_task in clients.items()
            }
        return out

    def baseline(self, answer_counts: Mapping[str, int], test_rows: Sequence[Mapping]) -> tuple[str, float | None]:
        """The majority-answer baseline of a single-task run (``Task.baseline``); a multitask run has
        one per task instead (``task_baselines``): ``("", None)``."""
        if self.multitask:
            return "", None
        return self.tasks[self.name].baseline(answer_counts, test_rows)

    def task_baselines(
        self, task_answer_counts: Mapping[str, Mapping[str, int]], test_rows: Sequence[dict]
    ) -> dict[str, dict[str, Any]]:
        """A multitask run's majority-answer baseline per task that has one (vqa, classification):
        ``{task: {"answer", "score"}}``, the majority of the task's training answers
        (``task_answer_counts[task]``, plus the untagged rows' ``""`` counts for ``default_task``)
        scored on the task's test rows (``Task.baseline``). Empty for a single-task run."""
        if not self.multitask:
            return {}
        groups = self.split(test_rows)
        out: dict[str, dict[str, Any]] = {}
        for name, task in self.tasks.items():
            if task.baseline_score is None:
                continue
            counts: dict[str, int] = dict(task_answer_counts.get(name, {}))
            if name == self.default_task:
                for answer, n in task_answer_counts.get("", {}).items():
                    counts[answer] = counts.get(answer, 0) + n
            if counts or name in groups:
                answer, score = task.baseline(counts, groups.get(name, []))
                out[name] = {"answer": answer, "score": score}
        return out
