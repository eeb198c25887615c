"""Human-readable summary of a run (printed at the end, saved as ``summary.txt``) and its
accuracy plot. A primary metric that is not a fraction of 1 (``metric_bounded`` false: CIDEr-D,
or a multitask score with CIDEr-D in it) prints as a plain number rather than a percentage."""

from __future__ import annotations

from typing import Any

from fedumm.metrics import get_task, primary_metric_of


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def t2i_lines(t2i: dict[str, Any] | None, ceiling: bool = True) -> list[str]:
    """A phase's text-to-image summary (``federation.job.t2i_summary``): the GenEval score per
    category (untrained -> final), the VQ-reconstruction ceiling (``ceiling``), the
    teacher-forced image-token accuracy and NLL and CLIPScore."""
    if not t2i:
        return []

    def change(pair: dict[str, float | None], fmt) -> str:
        return fmt(pair["final"]) if pair["initial"] is None else f"{fmt(pair['initial'])} -> {fmt(pair['final'])}"

    percent = lambda x: _pct(x).strip()  # noqa: E731
    lines = []
    if "by_category" in t2i:
        lines.append(
            "  GenEval by category (untrained -> final): "
            + ", ".join(f"{tag} {change(pair, percent)}" for tag, pair in t2i["by_category"].items())
        )
    if "images" in t2i and t2i["geneval_checked"] < t2i["images"]:
        lines.append(
            f"  GenEval checker: {t2i['geneval_checked']} of {t2i['images']} images checked (the others' classes "
            "or colours are outside the synthetic shapes; score them with GenEval's evaluator)"
        )
    if ceiling and "vq_ceiling" in t2i:
        parts = ", ".join(f"{tag} {percent(v)}" for tag, v in t2i["vq_ceiling_by_category"].items())
        overall = percent(t2i["vq_ceiling"])
        lines.append(f"  VQ-reconstruction ceiling: {overall}" + (f" ({parts})" if parts else ""))
    if "image_token_accuracy" in t2i:
        nll = f", NLL {change(t2i['image_token_nll'], lambda x: f'{x:.3f}')}" if "image_token_nll" in t2i else ""
        accuracy = change(t2i["image_token_accuracy"], percent)
        lines.append(f"  teacher-forced image tokens: top-1 accuracy {accuracy}{nll}")
    if "clip_score" in t2i:
        lines.append(f"  CLIPScore: {change(t2i['clip_score'], lambda x: f'{x:.2f}')}")
    return lines


def format_summary(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    task = summary.get("task", "vqa")
    metric = summary.get("metric") or primary_metric_of(task)
    # Summaries written before multitask runs carry no metric_bounded: their task says.
    bounded = summary["metric_bounded"] if "metric_bounded" in summary else get_task(task).bounded

    def show(x: float, fraction: bool = bounded) -> str:
        return _pct(x) if fraction else f"{x:6.3f}"

    def difference(delta: float) -> str:
        return f"{100 * delta:+.1f} pts" if bounded else f"{delta:+.3f}"

    lines = [
        f"fedumm run {summary['name']!r}: {summary['num_clients']} clients, "
        f"{'one-shot' if summary.get('mode') == 'one_shot' else str(summary['rounds']) + ' rounds'}, "
        f"strategy {summary['strategy']}, partition alpha {summary['partition_alpha']} "
        f"(label skew {summary['partition_skew']:.2f})",
        f"trainable parameters: {summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
        f"({100 * summary['trainable_parameters'] / summary['total_parameters']:.2f}%)",
        "",
    ]
    fed = [r for r in records if r["phase"] == "federated"]
    if fed:
        lines.append(f"{'round':>5}  {'global':>10}  {'clients':>7}  {'mean local':>14}  {'seconds':>7}   ({metric})")
        for r in fed:
            local = [m[f"local_{metric}"] for m in r.get("client_metrics", {}).values() if f"local_{metric}" in m]
            local_s = show(sum(local) / len(local)) if local else "-"
            secs = f"{r['seconds']['round']:.1f}" if "seconds" in r else "-"
            score = show(r["global"][metric]) if "global" in r else "-"  # eval.every: not evaluated
            lines.append(
                f"{r['round']:>5}  {score:>10}  {len(r.get('clients', [])) or '-':>7}  {local_s:>14}  {secs:>7}"
            )
        lines.append("")
    baseline = summary["majority_baseline_accuracy"]
    width = 40
    if baseline is not None:
        lines.append(
            f"{'majority-answer baseline (' + repr(summary['majority_answer']) + '):':<{width}}{_pct(baseline)}"
        )
    if "federated_final_accuracy" in summary:
        fed_acc = summary["federated_final_accuracy"]
        versus = f"{difference(fed_acc - baseline)} vs majority, " if baseline is not None else ""
        lines.append(
            f"{'federated global ' + metric + ':':<{width}}{show(fed_acc)}  "
            f"({versus}untrained {show(summary['federated_initial_accuracy']).strip()})"
        )
        by_type = ", ".join(f"{k} {show(v).strip()}" for k, v in summary["federated_by_answer_type"].items())
        if by_type:
            lines.append(f"  by answer type: {by_type}")
        majority = summary.get("majority_baseline_by_task", {})
        for name, part in summary.get("federated_by_task", {}).items():
            fraction = get_task(name).bounded
            initial = "-" if part["initial"] is None else show(part["initial"], fraction).strip()
            versus = ""
            if name in majority:
                versus = f"; majority {majority[name]['answer']!r} {show(majority[name]['score'], fraction).strip()}"
            lines.append(
                f"  {name} ({part['n']} rows) {part['metric']}: {show(part['final'], fraction).strip()} "
                f"(untrained {initial}{versus})"
            )
        lines += t2i_lines(summary.get("federated_t2i"))
    if "centralized_final_accuracy" in summary:
        cen_acc = summary["centralized_final_accuracy"]
        gap = ""
        if "federated_final_accuracy" in summary:
            gap = f"  (federated {difference(summary['federated_final_accuracy'] - cen_acc)})"
        lines.append(f"{'centralized, same budget:':<{width}}{show(cen_acc)}{gap}")
        lines += t2i_lines(summary.get("centralized_t2i"), ceiling=False)
    if "one_shot" in summary:
        floor = summary["one_shot"]["local_floor"]
        lines.append(f"{'one-shot ensemble of the clients:':<{width}}{show(summary['one_shot']['ensemble'])}")
        lines.append(
            f"{'one-shot local floor (own upload):':<{width}}{show(floor['mean'])}  "
            f"(min {show(floor['min']).strip()}, max {show(floor['max']).strip()})"
        )
    if "bytes_per_round" in summary:
        msg, full = summary["adapter_message_bytes"], summary["full_finetune_message_bytes"]
        lines.append(
            f"communication: {_kib(msg)} per message (full fine-tuning: {_kib(full)}), "
            f"{_kib(summary['bytes_per_round'])} per round; reduction "
            f"{summary['communication_reduction_pct']:.2f}%"
        )
    split = summary.get("federated_time_split")
    if split and split.get("round"):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in split.items() if k != "round")
        lines.append(f"federated round time: {split['round']:.1f} s ({parts} s)")
    official = summary.get("geneval_official")
    if official:
        lines.append(
            f"GenEval prompts: {official['samples']} images for each of {official['prompts']} prompts in "
            f"{official['folder']}; score them in a GenEval checkout: {official['command']}"
        )
    skipped = summary.get("skipped_rows")
    if skipped:  # None (not known) and 0 print nothing
        by_file = ", ".join(f"{name}: {n}" for name, n in (summary.get("skipped_rows_by_file") or {}).items())
        lines.append(
            f"skipped broken rows (on_error: skip): {skipped}"
            + (f" ({by_file})" if by_file else "")
            + "; messages in load_problems.txt"
        )
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)


def save_accuracy_plot(records: list[dict[str, Any]], path, metric: str = "vqa_accuracy", bounded: bool = True) -> None:
    """The global primary metric per round for each phase (federated, centralized) as a PNG;
    ``bounded`` metrics (fractions of 1) are drawn in percent on a 0-100 axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for phase in ("federated", "centralized"):
        points = [(r["round"], r["global"][metric]) for r in records if r["phase"] == phase and "global" in r]
        if points:
            xs, ys = zip(*points)
            scale = 100 if bounded else 1
            ax.plot(xs, [scale * y for y in ys], marker="o", label=phase)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"global {metric}" + (" (%)" if bounded else ""))
    if bounded:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
