"""``fedumm`` command line: ``run``, ``centralized``, ``export``, ``partition``, ``config``, ``data``, and for
many runs ``compare``, ``sweep`` and ``slurm``.

User errors (bad config, missing files, unknown names) print one line and exit 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml

from fedumm.compare import read_run, runs_markdown, write_comparison
from fedumm.config import load_config
from fedumm.config_doc import config_reference, config_schema
from fedumm.data.federated import LOAD_PROBLEMS_FILE, build_federated_data
from fedumm.data.partition import save_partition_heatmap
from fedumm.data.vqav2 import write_vqav2
from fedumm.engines.nvflare import export_job, simulate_nvflare
from fedumm.engines.nvflare.protocol import SITE_CONFIG_FILE, resolve_placement
from fedumm.engines.simulation import simulate
from fedumm.errors import ConfigError, FedummError
from fedumm.report_html import write_report
from fedumm.runlog import CHECKPOINT, MARKER
from fedumm.slurm import SlurmOptions, sbatch_script, submit
from fedumm.sweep import parse_grid, plan_sweep, run_sweep, write_sweep_tables
from fedumm.validation import load_run_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedumm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def job(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", help="YAML config (default: the built-in quickstart)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set federation.rounds=3 (repeatable)",
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        return p

    run = job(
        "run",
        "run a federated job (and its centralized baseline if eval.centralized_baseline); "
        "engine.name=nvflare runs it in NVIDIA FLARE's simulator",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue RUN_DIR in place from its last checkpoint, with its config.yaml (plus --set, "
        "e.g. --set federation.rounds=20); metrics.jsonl gets the new rounds",
    )
    job("centralized", "train the same adapter on the pooled data with the same budget")
    export = job("export", "write an NVIDIA FLARE job folder for a real deployment (nvflare job submit)")
    export.add_argument(
        "--out", required=True, metavar="DIR", help="folder to write the job into (the job is DIR/<name>)"
    )
    partition = job("partition", "load and partition the data and show the split, without training")
    partition.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="folder for partition.json and partition.png (default: output.dir/<name>-partition)",
    )
    config_cmd = job("config", "print the resolved config as YAML (or the reference / JSON schema of every key)")
    shown = config_cmd.add_mutually_exclusive_group()
    shown.add_argument("--schema", action="store_true", help="print the JSON schema of a config file (for editors)")
    shown.add_argument(
        "--reference", action="store_true", help="print the configuration reference (Markdown: every key and its help)"
    )

    compare = sub.add_parser(
        "compare", help="compare finished runs: final/best metric, rounds to a target, bytes, time"
    )
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (with summary.json)")
    compare.add_argument("--target", type=float, default=None, help="report the first round reaching this metric")
    compare.add_argument(
        "--out", metavar="DIR", default=None, help="also write compare.md, compare.csv and compare.png into DIR"
    )
    compare.add_argument("--debug", action="store_true", help="show tracebacks")

    report = sub.add_parser("report", help="write a finished run folder's report.html again")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--debug", action="store_true", help="show tracebacks")

    def grid(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--grid",
            action="append",
            default=[],
            metavar="KEY=V1,V2",
            help="a config key and its values (repeatable: the grid is their product)",
        )
        p.add_argument("--seeds", type=int, default=1, help="runs per grid point: seed, seed+1, ... (default 1)")

    sweep = job("sweep", "run a grid of configs x seeds as separate runs, then compare them (mean ± std)")
    grid(sweep)
    sweep.add_argument("--jobs", type=int, default=1, help="runs at a time (they share the cores)")
    sweep.add_argument("--out", metavar="DIR", default=None, help="sweep folder (default: output.dir/sweep-<name>)")
    sweep.add_argument("--target", type=float, default=None, help="report rounds to reach this metric")

    slurm = job("slurm", "write (and with --submit, submit) an sbatch script that runs the job on Slurm")
    slurm.add_argument("--partition", required=True)
    slurm.add_argument("--gpus", type=int, required=True, help="GPUs per job (--gres=gpu:N)")
    slurm.add_argument("--time", required=True, help="wall-time limit, e.g. 02:00:00 or 1-00:00:00")
    slurm.add_argument("--job-name", default=None, help="default: the run name")
    slurm.add_argument("--cpus", type=int, default=8, help="--cpus-per-task (default 8)")
    slurm.add_argument("--mem", default="64G", help="--mem (default 64G)")
    slurm.add_argument("--venv", default=None, help="environment to activate (default: this one)")
    slurm.add_argument("--hf-home", default="$HOME/.cache/huggingface", help="HF_HOME with the pre-filled caches")
    slurm.add_argument("--log-dir", default="logs", help="folder for the job's .out/.err files")
    slurm.add_argument("--out", metavar="FILE", default=None, help="script path (default: output.dir/<name>.sbatch)")
    slurm.add_argument(
        "--array-from-sweep",
        metavar="SWEEP_DIR",
        default=None,
        help="an array job: one task per run of the sweep given by --grid/--seeds, into SWEEP_DIR",
    )
    grid(slurm)
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch")

    data = sub.add_parser("data", help="prepare data sets from their official files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    vqav2 = data_sub.add_parser(
        "vqav2",
        help="write one VQA v2 split (official question/annotation JSON + COCO images) as parquet for data.source hf",
    )
    vqav2.add_argument(
        "--questions", required=True, metavar="Q.json", help="v2_OpenEnded_mscoco_<split>_questions.json"
    )
    vqav2.add_argument("--annotations", required=True, metavar="A.json", help="v2_mscoco_<split>_annotations.json")
    vqav2.add_argument("--images", required=True, metavar="COCO_DIR", help="the split's COCO images, e.g. val2014/")
    vqav2.add_argument("--out", required=True, metavar="DIR", help="data set folder (data.hf.path); writes DIR/data/")
    vqav2.add_argument(
        "--split", default=None, help="split name (default: train for train2014, validation for val2014)"
    )
    vqav2.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="a question with a missing image or broken fields: raise = stop; skip = leave it out, listed in "
        "DIR/<split>_problems.txt",
    )
    vqav2.add_argument(
        "--embed-images",
        action="store_true",
        help="store image bytes in the parquet (portable, about 5 copies of each train image) instead of paths",
    )
    vqav2.add_argument("--overwrite", action="store_true", help="replace the split's shards if DIR has them")
    vqav2.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _data(args: argparse.Namespace) -> int:
    """``fedumm data vqav2``: the official files to parquet shards, progress on stderr."""
    written = write_vqav2(
        args.questions,
        args.annotations,
        args.images,
        args.out,
        split=args.split,
        on_error=args.on_error,
        embed_images=args.embed_images,
        overwrite=args.overwrite,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    where = written.files[0].parent
    print(f"wrote {written.rows:,} rows of split {written.split!r} to {where} ({len(written.files)} shard(s))")
    if written.skipped:
        print(f"skipped {written.skipped:,} questions; listed in {written.problems_file}")
    print(f"read it with data.source: hf, data.hf.path: {Path(args.out)}, data.hf.split / test_split: {written.split}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    rows = [read_run(path, args.target) for path in args.runs]
    print(runs_markdown(rows, args.target), end="")
    if args.out:
        written = write_comparison(rows, Path(args.out), args.target)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _sweep(args: argparse.Namespace, config) -> int:
    out = Path(args.out) if args.out else Path(config.output.dir) / f"sweep-{config.name}"
    runs = plan_sweep(args.config, args.overrides, parse_grid(args.grid), args.seeds, out)
    result = run_sweep(args.config, runs, out, args.jobs)
    table = write_sweep_tables(result, out, args.target)
    if table:
        print(table, end="")
        print(f"wrote {out / 'sweep.md'}, {out / 'sweep.csv'}, {out / 'compare.md'}, {out / 'compare.png'}")
    if result.failed:
        raise FedummError(
            f"sweep: {len(result.failed)} of {len(runs)} runs failed ({', '.join(result.failed.values())}); "
            "run the same command again to retry them"
        )
    return 0


def _slurm(args: argparse.Namespace, config) -> int:
    options = SlurmOptions(
        partition=args.partition,
        gpus=args.gpus,
        time=args.time,
        job_name=args.job_name or config.name,
        cpus=args.cpus,
        mem=args.mem,
        log_dir=args.log_dir,
        venv=args.venv,
        hf_home=args.hf_home,
    )
    array = None
    if args.array_from_sweep:
        if not args.grid:
            raise ConfigError("--array-from-sweep: give the sweep's --grid (and --seeds)")
        array = plan_sweep(args.config, args.overrides, parse_grid(args.grid), args.seeds, Path(args.array_from_sweep))
    elif args.grid or args.seeds != 1:
        raise ConfigError("--grid/--seeds: only with --array-from-sweep SWEEP_DIR")
    script = Path(args.out) if args.out else Path(config.output.dir) / f"{options.job_name}.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    Path(options.log_dir).mkdir(parents=True, exist_ok=True)  # Slurm opens the log files before the script runs
    script.write_text(sbatch_script(args.config, args.overrides, options, array))
    script.chmod(0o755)
    tasks = f" ({len(array)} array tasks)" if array else ""
    print(f"wrote {script}{tasks}")
    if args.submit:
        print(f"submitted: Slurm job {submit(script)}")
    else:
        print(f"submit it with: sbatch {script}")
    return 0


def _partition(config, out: str | None) -> int:
    data = build_federated_data(config.data, config.federation.num_clients, config.seed, task=config.eval.task)
    folder = Path(out) if out else Path(config.output.dir) / f"{config.output.name or config.name}-partition"
    folder.mkdir(parents=True, exist_ok=True)
    stats = data.partition
    (folder / "partition.json").write_text(json.dumps(stats.to_dict(), indent=2, sort_keys=True) + "\n")
    heatmap = save_partition_heatmap(stats, folder / "partition.png")
    data.load_report(folder)  # the skipped rows' messages, as a run folder has them
    print(stats.table())
    print(
        f"{len(stats.sizes)} clients, label skew {stats.skew():.3f} (0 = IID), "
        f"{len(data.global_test)} global test rows, {data.skipped_rows} rows skipped"
    )
    problems = f" and {folder / LOAD_PROBLEMS_FILE}" if data.load_problems else ""
    print(f"wrote {folder / 'partition.json'}, {heatmap}{problems}")
    return 0


def _export(config, out: str) -> int:
    job_dir = export_job(config, out)
    print(f"NVIDIA FLARE job written to {job_dir}")
    if resolve_placement(config, exported=True) == "partition":
        print(
            "data: every site splits data.* with the run seed (engine.data_placement=partition): a demo, "
            "not a deployment where sites own their data"
        )
    elif config.engine.sites:
        print(
            f"data: engine.sites names {len(config.engine.sites)} sites ({', '.join(sorted(config.engine.sites))}); "
            f"a site's own {SITE_CONFIG_FILE} overrides its entry"
        )
    else:
        print(
            f"data: each site reads its own {SITE_CONFIG_FILE} in its workspace (a YAML mapping with a "
            f"'data:' section); all sites of the deployment join, federation.num_clients must match"
        )
    print(f"submit it with: nvflare job submit -j {job_dir}")
    return 0


def _resume_overrides(config: str | None, run_dir: str) -> tuple[Path, list[str]]:
    """``run --resume RUN_DIR``: RUN_DIR's config, resumed from and written back to RUN_DIR. A
    run killed before its first checkpoint (no checkpoint, no summary) starts over in place."""
    if config is not None:
        raise ConfigError(
            f"run --resume {run_dir}: give no config file; the run's own config.yaml is used (change keys with --set)"
        )
    folder = Path(run_dir)
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()  # output.name must be the folder's own name
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"run --resume: {folder} is not a run folder (no config.yaml)")
    # JSON strings are YAML strings: paths with ':' or '#' survive the --set parsing.
    output = [f"output.dir={json.dumps(str(folder.parent))}", f"output.name={json.dumps(folder.name)}"]
    started = (folder / "summary.json").exists() or (folder / "checkpoints" / f"{CHECKPOINT}.safetensors").exists()
    if not started and (folder / MARKER).is_file():
        # A branch (resume_from another run) starts again from its source; any other run from round 0.
        source = load_config(folder / "config.yaml").federation.resume_from
        own = source is None or folder.resolve() in (Path(source).resolve(), *Path(source).resolve().parents)
        print(
            f"fedumm: {folder} has no checkpoint yet: starting it over from "
            + ("round 0" if own else f"federation.resume_from ({source})"),
            file=sys.stderr,
        )
        return folder / "config.yaml", [
            *(["federation.resume_from=null"] if own else []),
            *output,
            "output.overwrite=true",
        ]
    return folder / "config.yaml", [f"federation.resume_from={json.dumps(str(folder))}", *output]


def _run(args: argparse.Namespace) -> int:
    if args.command == "data":
        return _data(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "config" and (args.schema or args.reference):
        print(config_schema() if args.schema else config_reference(), end="")
        return 0
    if args.command == "report":
        print(f"wrote {write_report(args.run_dir)}")
        return 0
    overrides = list(args.overrides)
    if args.command == "export":  # an exported job always runs on NVIDIA FLARE
        overrides.insert(0, "engine.name=nvflare")
    config_path = args.config
    if getattr(args, "resume", None):
        config_path, resume = _resume_overrides(args.config, args.resume)
        overrides += resume
    config = load_run_config(config_path, overrides)
    if args.command == "config":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.command == "export":
        return _export(config, args.out)
    if args.command == "partition":
        return _partition(config, args.out)
    if args.command == "sweep":
        return _sweep(args, config)
    if args.command == "slurm":
        return _slurm(args, config)

    from transformers.utils import logging as hf_logging  # noqa: PLC0415 (heavy: only commands that load models)

    # Our own progress lines say what happens; the library's per-file load bars are noise here.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft calls a transformers method that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    if args.command == "run" and config.engine.name == "nvflare":
        result = simulate_nvflare(config)
    elif args.command == "run":
        result = simulate(config)
    else:
        result = simulate(config, federated=False, centralized=True)
    print((Path(result.run_dir) / "summary.txt").read_text(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except FedummError as exc:
        if args.debug:
            raise
        print(f"fedumm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedumm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
