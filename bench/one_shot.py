"""One-shot federation (federation.mode: one_shot) against multi-round FedAvg at the same total local epochs.

Two tasks, in-process with ``simulate``, each at Dirichlet alpha 0.5 and 5.0 (--alphas):

- fedmllm: a FedMLLM-style job (configs/fedmllm_hateful_memes.yaml's shape: binary "is it
  hateful" classification in the Hateful Memes file format, modality mix with rate 0.3) on
  synthetic memes written to a temporary folder, so it runs offline: a 32x32 image (red, blue or
  green) and one line of text; hateful (yes) iff the image is red AND the text is hostile, so
  both modalities matter and a client missing one sees only part of the rule.
- vqa: the default task (configs/quickstart.yaml: synthetic VQA).

Every client trains --epochs local epochs once in the one-shot runs (one per combiner: mean,
sign_conflict, ot_align with the barycentric projection and with the reference code's 1/n form,
yoco); the multi-round reference is FedAvg over --rounds rounds of --epochs / --rounds local
epochs each. The prediction ensemble and the local floor (each client's own upload on the global
test: mean [min, max]) are the server-side references of the plain-mean run (plain local
training; YOCO's run has its own, printed in its log line). Bytes: every upload and download of
the run (metrics.jsonl bytes.total summed over rounds). Prints a Markdown table. Accuracy of
the global adapters and of the local floor is scored on generated answers; the ensemble answers
with the candidate of highest mean likelihood (on fedmllm the label with the highest mean
P(label)), so on fedmllm compare scores through ROC-AUC (P(yes) per row, the ensemble's averaged).

    python bench/one_shot.py                                  # the defaults (about an hour on 2 shared cores)
    python bench/one_shot.py --tasks vqa --alphas 0.5 --train-rows 120 --test-rows 40 --epochs 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
COMBINERS = [
    ("mean", []),
    ("sign_conflict", []),
    ("ot_align", []),
    ("ot_align (1/n form)", ["federation.strategy.projection=reference"]),
    ("yoco", []),
]
HOSTILE = ["they are vermin", "send them all back", "those people ruin everything"]
BENIGN = ["look at this cute dog", "happy monday everyone", "my lunch today was great"]
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 180, 30)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["fedmllm", "vqa"], choices=["fedmllm", "vqa"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.5, 5.0], help="data.partition.alpha values")
    parser.add_argument("--clients", type=int, default=4, help="federation.num_clients")
    parser.add_argument("--train-rows", type=int, default=400, help="training rows (synthetic)")
    parser.add_argument("--test-rows", type=int, default=100, help="global test rows")
    parser.add_argument("--epochs", type=int, default=4, help="total local epochs per client")
    parser.add_argument("--rounds", type=int, default=4, help="FedAvg rounds (epochs / rounds local epochs each)")
    parser.add_argument("--max-new-tokens", type=int, default=3, help="model.max_new_tokens (answers are 1 word)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    args = parser.parse_args()
    if args.epochs % args.rounds:
        parser.error(f"--epochs ({args.epochs}) must be a multiple of --rounds ({args.rounds}): same total epochs")
    return args


def write_memes(folder: Path, train: int, test: int, seed: int) -> tuple[Path, Path]:
    """Hateful-Memes-format tables (img, text, label) of synthetic memes, and their images."""
    from PIL import Image

    rng = random.Random(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(train + test):
        colour = rng.choices(list(COLOURS), weights=[0.6, 0.2, 0.2])[0]
        hostile = rng.random() < 0.7
        pixels = [tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour]) for _ in range(32 * 32)]
        image = Image.new("RGB", (32, 32))
        image.putdata(pixels)
        image.save(folder / "img" / f"{i}.png")
        text = rng.choice(HOSTILE if hostile else BENIGN)
        rows.append({"id": i, "img": f"img/{i}.png", "text": text, "label": int(colour == "red" and hostile)})
    paths = folder / "train.jsonl", folder / "test.jsonl"
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in rows[:train]))
    paths[1].write_text("".join(json.dumps(r) + "\n" for r in rows[train:]))
    return paths


def task_overrides(task: str, args: argparse.Namespace, folder: Path) -> list[str]:
    if task == "vqa":
        return [f"data.synthetic.train_samples={args.train_rows}", f"data.synthetic.test_samples={args.test_rows}"]
    train, test = write_memes(folder / "memes", args.train_rows, args.test_rows, seed=7)
    return [
        "data.source=table",
        "data.table.format=hateful_memes",
        f"data.table.path={train}",
        f"data.table.test_path={test}",
        "data.modality.scenario=mix",
        "data.modality.rate=0.3",
        "data.modality.image_only_prompt='Is the content hateful based on the image?'",
        "data.modality.no_modality_prompt='Is the content hateful?'",
        "eval.task=classification",
        "eval.positive_label='yes'",
    ]


def total_bytes(records: list[dict]) -> int:
    return sum(r["bytes"]["total"] for r in records if "bytes" in r)


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    from fedumm.engines.simulation import simulate
    from fedumm.federation import ModelHost
    from fedumm.validation import load_run_config

    args = parse_args()
    out = Path(tempfile.mkdtemp(prefix="fedumm-bench-one-shot-"))
    common = [
        f"federation.num_clients={args.clients}",
        "eval.centralized_baseline=false",
        "eval.clients=false",
        "output.progress=false",
        f"model.max_new_tokens={args.max_new_tokens}",
        f"output.dir={out}",
        *args.set,
    ]
    print(f"run folders: {out}{'' if args.keep else ' (deleted at the end; --keep keeps them)'}")
    print(
        f"{args.clients} clients, {args.train_rows} train / {args.test_rows} test rows, one-shot: {args.epochs} "
        f"local epochs once; FedAvg: {args.rounds} rounds x {args.epochs // args.rounds} epochs; overrides: "
        f"{', '.join(common)}"
    )
    table = []
    started = time.perf_counter()
    try:
        for task in args.tasks:
            base = common + task_overrides(task, args, out)
            host = ModelHost(load_run_config(QUICKSTART, base))  # one base model per task, shared by its runs
            for alpha in args.alphas:
                runs = [
                    (
                        f"fedavg, {args.rounds} rounds",
                        [
                            "federation.strategy.name=fedavg",
                            f"federation.rounds={args.rounds}",
                            f"train.local_epochs={args.epochs // args.rounds}",
                        ],
                    )
                ]
                runs += [
                    (
                        label,
                        [
                            "federation.mode=one_shot",
                            "federation.rounds=1",
                            f"federation.strategy.name={label.split()[0]}",
                            f"train.local_epochs={args.epochs}",
                            *extra,
                        ],
                    )
                    for label, extra in COMBINERS
                ]
                for index, (label, extra) in enumerate(runs):
                    name = f"{task}-{alpha}-{index}"
                    config = load_run_config(
                        QUICKSTART, [*base, *extra, f"data.partition.alpha={alpha}", f"output.name={name}"]
                    )
                    t0 = time.perf_counter()
                    result = simulate(config, host=host)
                    records = result.federated.records
                    metric = result.federated.metric
                    final = records[-1]["global"][metric]
                    auc = records[-1]["global"].get("roc_auc")
                    sent = total_bytes(records)
                    table.append((task, alpha, label, final, auc, sent))
                    line = f"  {task} alpha={alpha} {label}: {metric} {final:.3f}, {sent / 1024:.0f} KiB"
                    refs = records[-1].get("one_shot")
                    if refs:
                        floor = refs["local_floor"]
                        line += (
                            f"; ensemble {refs['ensemble'][metric]:.3f}, local floor {floor['mean']:.3f} "
                            f"[{floor['min']:.3f}, {floor['max']:.3f}]"
                        )
                        if label == "mean":
                            ensemble = refs["ensemble"]
                            table.append(
                                (
                                    task,
                                    alpha,
                                    "ensemble of the clients",
                                    ensemble[metric],
                                    ensemble.get("roc_auc"),
                                    sent,
                                )
                            )
                            table.append((task, alpha, "local floor mean [min, max]", floor, None, sent))
                    print(line + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    print(f"\ntotal {(time.perf_counter() - started) / 60:.1f} min; metric: fedmllm accuracy, vqa vqa_accuracy\n")
    print("| task | alpha | method | final accuracy | ROC-AUC | bytes sent |")
    print("|---|---:|---|---:|---:|---:|")
    for task, alpha, label, value, auc, sent in table:
        shown = (
            f"{value['mean']:.3f} [{value['min']:.3f}, {value['max']:.3f}]"
            if isinstance(value, dict)
            else f"{value:.3f}"
        )
        auc_shown = "-" if auc is None else f"{auc:.3f}"
        print(f"| {task} | {alpha} | {label} | {shown} | {auc_shown} | {sent / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
