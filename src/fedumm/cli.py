"""``fedumm`` command line: ``run``, ``centralized``, ``config``.

User errors (bad config, missing files, unknown names) print one line and exit 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from pathlib import Path

from fedumm.errors import FedummError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedumm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def job(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", help="YAML config (default: the built-in quickstart)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set federation.rounds=3 (repeatable)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        return p

    job("run", "run a federated job (and its centralized baseline if eval.centralized_baseline)")
    job("centralized", "train the same adapter on the pooled data with the same budget")
    job("config", "print the resolved config as YAML")
    return parser


def _run(args: argparse.Namespace) -> int:
    import yaml

    from fedumm.config import load_config

    config = load_config(args.config, args.overrides)
    if args.command == "config":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    from transformers.utils import logging as hf_logging

    from fedumm.engines.simulation import simulate
    from fedumm.runlog import RunFolder
    from fedumm.report import format_summary

    # Our own progress lines say what happens; the library's per-file load bars are noise here.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft calls a transformers method that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    if args.command == "run":
        result = simulate(config)
    else:
        result = simulate(config, federated=False, centralized=True)
    folder = RunFolder(Path(result.run_dir))
    text = format_summary(result.summary, folder.read_metrics())
    (folder.path / "summary.txt").write_text(text + "\n")
    print(text)
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
