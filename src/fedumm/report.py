"""Human-readable summary of a run, printed at the end and saved as ``summary.txt``."""

from __future__ import annotations

from typing import Any


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_summary(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    lines = [
        f"fedumm run {summary['name']!r}: {summary['num_clients']} clients, {summary['rounds']} rounds, "
        f"strategy {summary['strategy']}, partition alpha {summary['partition_alpha']} "
        f"(label skew {summary['partition_skew']:.2f})",
        f"trainable parameters: {summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
        f"({100 * summary['trainable_parameters'] / summary['total_parameters']:.2f}%)",
        "",
    ]
    fed = [r for r in records if r["phase"] == "federated"]
    if fed:
        lines.append(f"{'round':>5}  {'global acc':>10}  {'clients':>7}  {'mean local acc':>14}  {'seconds':>7}")
        for r in fed:
            local = [m["local_vqa_accuracy"] for m in r.get("client_metrics", {}).values()
                     if "local_vqa_accuracy" in m]
            local_s = _pct(sum(local) / len(local)) if local else "-"
            secs = f"{r['seconds']['round']:.1f}" if "seconds" in r else "-"
            lines.append(
                f"{r['round']:>5}  {_pct(r['global']['vqa_accuracy']):>10}  "
                f"{len(r.get('clients', [])) or '-':>7}  {local_s:>14}  {secs:>7}"
            )
        lines.append("")
    baseline = summary["majority_baseline_accuracy"]
    lines.append(f"majority-answer baseline ({summary['majority_answer']!r}): {_pct(baseline)}")
    if "federated_final_accuracy" in summary:
        fed_acc = summary["federated_final_accuracy"]
        lines.append(
            f"federated global VQA accuracy:          {_pct(fed_acc)}  "
            f"({100 * (fed_acc - baseline):+.1f} pts vs majority, untrained "
            f"{_pct(summary['federated_initial_accuracy']).strip()})"
        )
        by_type = ", ".join(f"{k} {_pct(v).strip()}" for k, v in summary["federated_by_answer_type"].items())
        lines.append(f"  by answer type: {by_type}")
    if "centralized_final_accuracy" in summary:
        cen_acc = summary["centralized_final_accuracy"]
        gap = ""
        if "federated_final_accuracy" in summary:
            gap = f"  (federated {100 * (summary['federated_final_accuracy'] - cen_acc):+.1f} pts)"
        lines.append(f"centralized, same budget:               {_pct(cen_acc)}{gap}")
    if "bytes_per_round" in summary:
        msg, full = summary["adapter_message_bytes"], summary["full_finetune_message_bytes"]
        lines.append(
            f"communication: {_kib(msg)} per message (full fine-tuning: {_kib(full)}), "
            f"{_kib(summary['bytes_per_round'])} per round; reduction "
            f"{summary['communication_reduction_pct']:.2f}%"
        )
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)


def save_accuracy_plot(records: list[dict[str, Any]], path) -> None:
    """Global VQA accuracy per round for each phase (federated, centralized) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for phase in ("federated", "centralized"):
        points = [(r["round"], r["global"]["vqa_accuracy"]) for r in records if r["phase"] == phase]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=phase)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("global VQA accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
