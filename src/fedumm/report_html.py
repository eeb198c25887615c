"""``report.html``: one self-contained page per run folder (``fedumm report RUN_DIR`` writes it
again), made from the folder's files only (config.yaml, summary.json, metrics.jsonl,
partition.json/.png), so it can be regenerated, mailed or archived with the run.

Charts are PNGs inlined as data URIs and the page has no script and no link to anything
outside itself: it opens offline, in any browser. Sections: the configuration that matters
(model, data, partition, strategy, privacy), the headline numbers, the primary metric per round
(federated vs centralized vs the majority answer), each client's local metric, the breakdown by
answer type and by task, communication per round and cumulative, the partition heatmap,
rejected updates and missing clients, the privacy budget per round when there is one, and the
time each round took.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedumm.errors import ConfigError
from fedumm.metrics import TASKS
from fedumm.runlog import RunFolder, atomic_write_bytes

REPORT_FILE = "report.html"

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #1d2330; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #e3e7ef; padding-bottom: 0.2em; }
.sub { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #d5dae4; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f4f8; } td.k, th.k { text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #d5dae4; border-radius: 6px; padding: 0.6em 1em; min-width: 11em; background: #f8f9fc; }
.card b { display: block; font-size: 1.4em; color: #1f4fbf; }
img { max-width: 100%; } .note { color: #5b6475; font-size: 0.9em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned (names), the rest numbers."""

    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(f"<{tag}{' class=k' if i < left else ''}>{_e(_fmt(v))}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"


def _png(fig) -> str:
    """A matplotlib figure as an inline <img> (PNG data URI); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(width: float = 7.5, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to memory
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(width, height))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig, ax


def _phase(records: Sequence[Mapping[str, Any]], phase: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("phase") == phase]


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# ---------------------------------------------------------------------------- sections

_CONFIG_KEYS = (
    ("engine", "engine.name"),
    ("model backend", "model.backend"),
    ("model", "model.name_or_path"),
    ("model dtype", "model.dtype"),
    ("fine-tuning", "finetune.strategy"),
    ("LoRA rank / alpha", None),
    ("data source", "data.source"),
    ("partition", None),
    ("modality scenario", "data.modality.scenario"),
    ("clients / per round", None),
    ("rounds", "federation.rounds"),
    ("strategy", None),
    ("local training", None),
    ("wire dtype", "federation.wire_dtype"),
    ("privacy", None),
    ("task", "eval.task"),
    ("seed", "seed"),
)


def _config_rows(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    fed = config.get("federation", {})
    strategy = dict(fed.get("strategy", {}))
    name = strategy.pop("name", "fedavg")
    train = config.get("train", {})
    privacy = config.get("privacy", {})
    secure = privacy.get("secure_aggregation")
    derived = {
        "LoRA rank / alpha": f"{_get(config, 'adapter.r')} / {_get(config, 'adapter.alpha')}",
        "partition": f"{_get(config, 'data.partition.method')} (alpha {_get(config, 'data.partition.alpha')}, "
        f"over {_get(config, 'data.partition.label_column')})",
        "clients / per round": f"{fed.get('num_clients')} / fraction {fed.get('fraction_fit')}",
        "strategy": name + (f" {json.dumps(strategy)}" if strategy else ""),
        "local training": f"{train.get('optimizer')} lr {train.get('lr')}, "
        + (
            f"{train.get('local_steps')} steps"
            if train.get("local_steps") is not None
            else f"{train.get('local_epochs')} epoch(s)"
        )
        + f", batch {train.get('batch_size')}",
        "privacy": "none"
        if privacy.get("level", "none") == "none" and not secure
        else f"{privacy.get('level')} ({privacy.get('mechanism')}), z {privacy.get('noise_multiplier')}, "
        f"target epsilon {privacy.get('target_epsilon')}, clip {privacy.get('clip_norm')}"
        + (f", secure aggregation t={secure.get('threshold')}" if secure else ""),
    }
    return [(label, derived[label] if key is None else _get(config, key)) for label, key in _CONFIG_KEYS]


def _cards(summary: Mapping[str, Any]) -> str:
    metric = summary.get("metric", "metric")
    cards = [
        ("federated " + metric, summary.get("federated_final_accuracy")),
        ("untrained", summary.get("federated_initial_accuracy")),
        ("centralized, same budget", summary.get("centralized_final_accuracy")),
        (f"majority answer ({summary.get('majority_answer', '')!s})", summary.get("majority_baseline_accuracy")),
        ("trainable parameters", summary.get("trainable_parameters")),
        ("KiB per round", None if "bytes_per_round" not in summary else summary["bytes_per_round"] / 1024),
        ("epsilon", (summary.get("privacy") or {}).get("epsilon")),
    ]
    shown = [
        f'<div class="card">{_e(label)}<b>{_e(f"{value:,}" if isinstance(value, int) else _fmt(value))}</b></div>'
        for label, value in cards
        if value is not None
    ]
    return f'<div class="cards">{"".join(shown)}</div>'


def _metric_chart(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], metric: str) -> str:
    fig, ax = _figure()
    for phase in ("federated", "centralized"):
        points = [(r["round"], r["global"][metric]) for r in _phase(records, phase) if metric in r.get("global", {})]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=phase)
    baseline = summary.get("majority_baseline_accuracy")
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="grey", label="majority answer")
    ax.set_xlabel("round")
    ax.set_ylabel(f"global {metric}")
    ax.legend()
    return _png(fig)


def _client_table(records: Sequence[Mapping[str, Any]], metric: str) -> str:
    fed = [r for r in _phase(records, "federated") if r.get("client_metrics")]
    clients = sorted({c for r in fed for c in r["client_metrics"]}, key=lambda c: (len(c), c))
    if not clients:
        return '<p class="note">No client metrics were recorded.</p>'
    key = f"local_{metric}"
    local = any(key in m for r in fed for m in r["client_metrics"].values())
    shown = key if local else "train_loss"
    rows = [[r["round"], *(r["client_metrics"].get(c, {}).get(shown) for c in clients)] for r in fed]
    note = "" if local else f' <span class="note">(no local {_e(metric)}: clients evaluated nothing)</span>'
    return f"<p>{_e(shown)} per client and round{note}</p>" + _table(["round", *(f"client {c}" for c in clients)], rows)


def _task_metric(name: str, values: Mapping[str, Any]) -> str:
    """A task's primary metric (the registered task's; else the first metric its group reports)."""
    if name in TASKS:
        return TASKS[name].primary_metric
    return next((k for k in values if k not in ("n", "task")), "n")


def _breakdowns(records: Sequence[Mapping[str, Any]], metric: str) -> str:
    fed = _phase(records, "federated")
    if not fed:
        return ""
    last = next((r["global"] for r in reversed(fed) if "global" in r), {})  # eval.every: the last evaluated
    out = []
    tasks = last.get("by_task") or {}
    if tasks:  # each task by its own primary metric
        rows = [
            [name, values.get("n"), _task_metric(name, values), values.get(_task_metric(name, values))]
            for name, values in tasks.items()
        ]
        out.append("<h3>by task (last round)</h3>" + _table(["task", "n", "primary metric", "value"], rows, left=1))
    groups = last.get("by_answer_type") or {}
    if groups:
        rows = [[name, values.get("n"), values.get(metric)] for name, values in groups.items()]
        out.append("<h3>by answer type (last round)</h3>" + _table(["answer type", "n", metric], rows))
    return "".join(out) or '<p class="note">The task reports no breakdown.</p>'


def _communication(records: Sequence[Mapping[str, Any]]) -> str:
    fed = [r for r in _phase(records, "federated") if "bytes" in r]
    if not fed:
        return '<p class="note">No rounds were run.</p>'
    rounds = [r["round"] for r in fed]
    totals = [r["bytes"]["total"] / 1024 for r in fed]
    cumulative = [sum(totals[: i + 1]) for i in range(len(totals))]
    fig, ax = _figure()
    ax.bar(rounds, totals, color="#7aa2e3", label="KiB this round")
    ax.set_xlabel("round")
    ax.set_ylabel("KiB")
    right = ax.twinx()
    right.plot(rounds, cumulative, color="#c0392b", marker="o", label="cumulative KiB")
    right.set_ylabel("cumulative KiB")
    fig.legend(loc="upper left")
    rows = [
        [
            r["round"],
            sum(r["bytes"]["upload"].values()) / 1024,
            sum(r["bytes"]["download"].values()) / 1024,
            t,
            c,
        ]
        for r, t, c in zip(fed, totals, cumulative)
    ]
    return _png(fig) + _table(["round", "upload KiB", "download KiB", "total KiB", "cumulative KiB"], rows)


def _partition(folder: Path) -> str:
    parts = []
    heatmap = folder / "partition.png"
    if heatmap.is_file():
        data = base64.b64encode(heatmap.read_bytes()).decode()
        parts.append(f'<img alt="partition heatmap" src="data:image/png;base64,{data}">')
    stats = folder / "partition.json"
    if stats.is_file():
        info = json.loads(stats.read_text())
        sizes = info.get("sizes")
        if isinstance(sizes, list):
            parts.append(_table(["client", "training rows"], [[i, n] for i, n in enumerate(sizes)]))
    return "".join(parts) or '<p class="note">No partition files in the run folder.</p>'


def _problems(records: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in _phase(records, "federated"):
        for cid, reason in (r.get("rejected") or {}).items():
            rows.append([r["round"], f"client {cid}", "rejected", reason])
        if r.get("missing"):
            rows.append([r["round"], ", ".join(map(str, r["missing"])), "no reply", ""])
        if r.get("aggregate_error"):
            rows.append([r["round"], "-", "not aggregated", r["aggregate_error"]])
        elif r.get("aggregated") is False:
            rows.append([r["round"], "-", "not aggregated", "too few valid replies"])
    if not rows:
        return "<p>Every reply of every round was used.</p>"
    return _table(["round", "who", "what", "reason"], rows, left=4)


def _privacy(records: Sequence[Mapping[str, Any]]) -> str:
    points = [(r["round"], r["privacy"]["epsilon"]) for r in _phase(records, "federated") if "privacy" in r]
    if not points:
        return ""
    fig, ax = _figure()
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o", color="#8e44ad")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent")
    return "<h2>Privacy budget</h2>" + _png(fig)


#: The time split of a round (``federation.loop.TIME_PARTS``), its remainder and its wall time;
#: records written before the split have none of them but ``round``.
TIMING_COLUMNS = ("train", "client_eval", "global_eval", "serialise", "aggregate", "other", "round")


def _timings(records: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for phase in ("federated", "centralized"):
        for r in _phase(records, phase):
            seconds = r.get("seconds")
            if seconds:
                rows.append([phase, r["round"], *(seconds.get(k) for k in TIMING_COLUMNS)])
    if not rows:
        return '<p class="note">No timed rounds.</p>'
    return _table(["phase", "round", *(f"{k} s" for k in TIMING_COLUMNS)], rows, left=1)


# ---------------------------------------------------------------------------- the page


def render_report(folder: str | Path) -> str:
    """The report page of the run folder ``folder`` (it must have finished: summary.json)."""
    folder = Path(folder)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"report: {folder} has no summary.json (not a finished fedumm run folder)")
    try:
        summary = json.loads(summary_file.read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"report: {folder}: unreadable summary.json or config.yaml ({exc})") from None
    records = RunFolder(folder).read_metrics()
    metric = summary.get("metric", "vqa_accuracy")
    sections = [
        f"<h1>fedumm run {_e(summary.get('name', folder.name))}</h1>",
        f'<p class="sub">{_e(folder.resolve())} · task {_e(summary.get("task"))} · primary metric {_e(metric)}</p>',
        _cards(summary),
        "<h2>Configuration</h2>",
        _table(["setting", "value"], _config_rows(config or {}), left=2),
        f"<h2>Global {_e(metric)} per round</h2>",
        _metric_chart(records, summary, metric),
        "<h2>Clients' local metrics</h2>",
        _client_table(records, metric),
        "<h2>Breakdown</h2>",
        _breakdowns(records, metric),
        "<h2>Communication</h2>",
        _communication(records),
        "<h2>Partition</h2>",
        _partition(folder),
        "<h2>Rejected updates and missing clients</h2>",
        _problems(records),
        _privacy(records),
        "<h2>Timings</h2>",
        _timings(records),
        '<p class="note">Written by fedumm from the run folder\'s files; '
        "<code>fedumm report RUN_DIR</code> writes it again.</p>",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fedumm run {_e(summary.get('name', folder.name))}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_report(folder: str | Path) -> Path:
    """Write (atomically) ``report.html`` into the run folder; returns its path."""
    path = Path(folder) / REPORT_FILE
    atomic_write_bytes(path, render_report(folder).encode())
    return path
