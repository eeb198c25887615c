"""Compare finished runs (``fedumm compare RUN_DIR...``) and aggregate repeated runs over seeds
(``fedumm sweep``): one row per run read from its summary.json and metrics.jsonl, a Markdown
and CSV table, and an overlay plot of the primary metric per round.

A row holds the final and best global primary metric of the federated phase (of the
centralized phase for a ``fedumm centralized`` run), the first round that reached ``target``,
the bytes moved over all rounds, the training wall time and the privacy budget epsilon.
Groups of runs that differ only in their seed are summarised as mean ± sample standard
deviation (n − 1 in the denominator; 0 for a single run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedumm.errors import ConfigError
from fedumm.runlog import RunFolder

#: Columns of the per-run table, in order.
RUN_COLUMNS = ("run", "metric", "final", "best", "best_round", "rounds_to_target", "bytes", "seconds", "epsilon")


@dataclass(frozen=True)
class RunRow:
    """What ``fedumm compare`` reports of one run folder."""

    run: str
    path: Path
    metric: str
    final: float
    best: float
    best_round: int
    rounds_to_target: int | None  # None: never reached (or no target given)
    bytes: int
    seconds: float
    epsilon: float | None
    curve: tuple[tuple[int, float], ...] = field(repr=False)  # (round, metric), round 0 included
    params: Mapping[str, Any] = field(default_factory=dict)  # a sweep's grid values (and seed)

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in RUN_COLUMNS}


def _phase_records(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    for phase in ("federated", "centralized"):
        chosen = [r for r in records if r.get("phase") == phase]
        if chosen and (phase == "centralized" or f"{phase}_final_accuracy" in summary):
            return chosen
    return []


def rounds_to_target(curve: Sequence[tuple[int, float]], target: float | None) -> int | None:
    """The first trained round (round 0 is the untrained adapter) whose metric reaches
    ``target``; None when none does or no target is given."""
    if target is None:
        return None
    return next((rnd for rnd, value in curve if rnd > 0 and value >= target), None)


def read_run(path: str | Path, target: float | None = None, params: Mapping[str, Any] | None = None) -> RunRow:
    """The row of the finished run folder ``path``.

    Raises:
        ConfigError: ``path`` is not a finished run folder (no summary.json, an unreadable one,
            or no round records), naming the folder.
    """
    folder = Path(path)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        what = "a run folder that has not finished" if (folder / "config.yaml").is_file() else "not a run folder"
        raise ConfigError(f"compare: {folder} is {what} (no summary.json)")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"compare: {summary_file} is not readable JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("metric"), str):
        raise ConfigError(f"compare: {summary_file} has no 'metric' key; is it a fedumm summary?")
    metric = summary["metric"]
    records = _phase_records(RunFolder(folder).read_metrics(), summary)
    curve = tuple((int(r["round"]), float(r["global"][metric])) for r in records if metric in r.get("global", {}))
    if not curve:
        raise ConfigError(f"compare: {folder / 'metrics.jsonl'} has no round with global {metric!r}")
    trained = [point for point in curve if point[0] > 0] or list(curve)
    best_round, best = max(trained, key=lambda point: (point[1], -point[0]))
    reached = rounds_to_target(curve, target)
    privacy = summary.get("privacy") or {}
    return RunRow(
        run=folder.name,
        path=folder,
        metric=metric,
        final=curve[-1][1],
        best=best,
        best_round=best_round,
        rounds_to_target=reached,
        bytes=sum(int(r.get("bytes", {}).get("total", 0)) for r in records),
        # The rounds' wall time; round 0 (the untrained model's evaluation) is not a round.
        seconds=sum(float(r.get("seconds", {}).get("round", 0.0)) for r in records if r.get("round", 0) > 0),
        epsilon=privacy.get("epsilon"),
        curve=curve,
        params=dict(params or {}),
    )


# ---------------------------------------------------------------------------- groups over seeds


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of a quantity over runs (n = how many had a value)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        present = [float(v) for v in values if v is not None]
        if not present:
            return None
        std = statistics.stdev(present) if len(present) > 1 else 0.0
        return cls(statistics.fmean(present), std, len(present))


@dataclass(frozen=True)
class GroupRow:
    """Runs that differ only in their seed."""

    params: Mapping[str, Any]
    runs: int
    metric: str
    final: Spread
    best: Spread
    rounds_to_target: Spread | None  # over the runs that reached the target
    reached: int
    bytes: Spread
    seconds: Spread
    epsilon: Spread | None


def group_rows(rows: Sequence[RunRow], key: Callable[[RunRow], Mapping[str, Any]]) -> list[GroupRow]:
    """One ``GroupRow`` per distinct ``key(row)`` (e.g. the grid values without the seed), in first-seen order."""
    groups: dict[str, tuple[Mapping[str, Any], list[RunRow]]] = {}
    for row in rows:
        params = key(row)
        groups.setdefault(json.dumps(params, sort_keys=True, default=str), (params, []))[1].append(row)
    out = []
    for params, members in groups.values():
        metrics = {r.metric for r in members}
        if len(metrics) > 1:
            raise ConfigError(f"compare: runs of group {dict(params)} report different metrics {sorted(metrics)}")
        out.append(
            GroupRow(
                params=params,
                runs=len(members),
                metric=members[0].metric,
                final=Spread.of([r.final for r in members]),
                best=Spread.of([r.best for r in members]),
                rounds_to_target=Spread.of([r.rounds_to_target for r in members]),
                reached=sum(r.rounds_to_target is not None for r in members),
                bytes=Spread.of([r.bytes for r in members]),
                seconds=Spread.of([r.seconds for r in members]),
                epsilon=Spread.of([r.epsilon for r in members]),
            )
        )
    return out


# ---------------------------------------------------------------------------- tables


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _spread(value: Spread | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value.mean:.{digits}f} ± {value.std:.{digits}f}"


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def runs_markdown(rows: Sequence[RunRow], target: float | None = None) -> str:
    """The per-run table; ``rounds to target`` is shown when a target was given."""
    header = ["run", "metric", "final", "best (round)", *(["rounds to " + _num(target)] if target is not None else [])]
    header += ["KiB moved", "seconds", "epsilon"]
    body = [
        [
            r.run,
            r.metric,
            _num(r.final),
            f"{_num(r.best)} ({r.best_round})",
            *([_num(r.rounds_to_target)] if target is not None else []),
            f"{r.bytes / 1024:.1f}",
            f"{r.seconds:.1f}",
            _num(r.epsilon, 2),
        ]
        for r in rows
    ]
    return _markdown(header, body)


def runs_csv(rows: Sequence[RunRow]) -> str:
    buffer = io.StringIO()
    params = sorted({k for r in rows for k in r.params})
    writer = csv.DictWriter(buffer, fieldnames=[*RUN_COLUMNS, "path", *params], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r.as_dict(), "path": str(r.path), **{k: r.params.get(k) for k in params}})
    return buffer.getvalue()


def groups_markdown(groups: Sequence[GroupRow], target: float | None = None) -> str:
    """The mean ± std table of a sweep, one line per grid point."""
    keys = list(dict.fromkeys(k for g in groups for k in g.params))
    header = [*keys, "runs", "metric", "final", "best"]
    header += [f"rounds to {_num(target)} (reached)"] if target is not None else []
    header += ["KiB moved", "seconds", "epsilon"]
    body = []
    for g in groups:
        cells = [str(g.params.get(k, "-")) for k in keys] + [str(g.runs), g.metric, _spread(g.final), _spread(g.best)]
        if target is not None:
            cells.append(f"{_spread(g.rounds_to_target, 1)} ({g.reached}/{g.runs})")
        kib = Spread(g.bytes.mean / 1024, g.bytes.std / 1024, g.bytes.n)
        cells += [_spread(kib, 1), _spread(g.seconds, 1), _spread(g.epsilon, 2)]
        body.append(cells)
    return _markdown(header, body)


def groups_csv(groups: Sequence[GroupRow]) -> str:
    buffer = io.StringIO()
    keys = list(dict.fromkeys(k for g in groups for k in g.params))
    quantities = ("final", "best", "rounds_to_target", "bytes", "seconds", "epsilon")
    fields = [*keys, "runs", "metric", "reached"] + [f"{q}_{s}" for q in quantities for s in ("mean", "std")]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for g in groups:
        row: dict[str, Any] = {**{k: g.params.get(k) for k in keys}, "runs": g.runs, "metric": g.metric}
        row["reached"] = g.reached
        for q in quantities:
            spread = getattr(g, q)
            row[f"{q}_mean"] = None if spread is None else spread.mean
            row[f"{q}_std"] = None if spread is None else spread.std
        writer.writerow(row)
    return buffer.getvalue()


def save_overlay_plot(rows: Sequence[RunRow], path: Path) -> Path:
    """The global primary metric per round of every run on one axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for row in rows:
        xs, ys = zip(*row.curve)
        ax.plot(xs, ys, marker="o", markersize=3, label=row.run)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(" / ".join(sorted({r.metric for r in rows})))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_comparison(rows: Sequence[RunRow], out: Path, target: float | None = None) -> list[Path]:
    """compare.md, compare.csv and compare.png in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.md", out / "compare.csv"]
    written[0].write_text(runs_markdown(rows, target))
    written[1].write_text(runs_csv(rows))
    written.append(save_overlay_plot(rows, out / "compare.png"))
    return written
