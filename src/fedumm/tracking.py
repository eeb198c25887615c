"""Experiment trackers (``output.trackers``): every round's record goes to TensorBoard and/or
MLflow through their own libraries, the same in every engine (the round loop logs; under NVIDIA
FLARE the server process runs that loop, so it logs for the federation).

A record becomes scalars once (``round_scalars``), keyed ``<phase>/...`` with the round as the
step: the global metrics (and by answer type / by task), each client's metrics, bytes up, down and
in total, the round's seconds, rejected and missing clients, and epsilon when the run is private.
MLflow also gets the resolved config as parameters and, at the end, summary.json, report.html
and the adapter folder as artifacts. MLflow writes to ``MLFLOW_TRACKING_URI`` when it is set,
else to a file store in the run folder (``<run>/mlruns``); a resumed run continues its MLflow run
(its id is kept in ``<run>/mlflow_run_id``).
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

from fedumm.config import RunConfig
from fedumm.errors import ConfigError

MLFLOW_RUN_ID_FILE = "mlflow_run_id"
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in ((k, _number(v)) for k, v in values.items()) if v is not None}


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl record, ``<phase>/<group>/<name>``."""
    phase = record.get("phase", "federated")
    out = _numbers(f"{phase}/global", record.get("global", {}))
    for breakdown in ("by_answer_type", "by_task"):
        for group, values in (record.get("global", {}).get(breakdown) or {}).items():
            out.update(_numbers(f"{phase}/global/{breakdown}/{group}", values))
    for cid, values in (record.get("client_metrics") or {}).items():
        out.update(_numbers(f"{phase}/client/{cid}", values))
    sent = record.get("bytes")
    if sent:
        out[f"{phase}/bytes/upload"] = float(sum(sent.get("upload", {}).values()))
        out[f"{phase}/bytes/download"] = float(sum(sent.get("download", {}).values()))
        out[f"{phase}/bytes/total"] = float(sent.get("total", 0))
    out.update(_numbers(f"{phase}/seconds", record.get("seconds") or {}))
    if "clients" in record:
        out[f"{phase}/rejected"] = float(len(record.get("rejected") or {}))
        out[f"{phase}/missing"] = float(len(record.get("missing") or []))
    privacy = record.get("privacy") or {}
    if _number(privacy.get("epsilon")) is not None:
        out[f"{phase}/privacy/epsilon"] = float(privacy["epsilon"])
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as dotted keys with string values (lists and nulls as YAML)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{dotted}."))
        else:
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            out[dotted] = text[:_MAX_PARAM_CHARS]
    return out


class Tracker(ABC):
    """One tracking library behind ``output.trackers``."""

    name: ClassVar[str]

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        """Files and folders of the finished run (only trackers that keep artifacts)."""

    @abstractmethod
    def close(self) -> None: ...


def _missing(library: str, tracker: str) -> ConfigError:
    return ConfigError(
        f"output.trackers: {tracker} needs the {library} package: pip install 'fedumm[tracking]' (or {library})"
    )


class TensorBoardTracker(Tracker):
    """Event files in ``<run>/tensorboard`` through torch's ``SummaryWriter`` (tensorboard's format)."""

    name = "tensorboard"

    def __init__(self, config: RunConfig, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", self.name) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config.to_dict(), sort_keys=False) + "\n```")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """An MLflow run (``MlflowClient``): the config as parameters, metrics per round, artifacts at the end."""

    name = "mlflow"

    def __init__(self, config: RunConfig, run_dir: Path):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", self.name) from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow 3 keeps its file store but refuses it unless asked: the run folder's own store is the point.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(config.name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(config.name)
        id_file = run_dir / MLFLOW_RUN_ID_FILE
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"fedumm.run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id + "\n")
        params = [Param(k, v) for k, v in flat_params(config.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * time.time())
        batch = [Metric(key.replace(" ", "_"), value, stamp, step) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, type[Tracker]] = {cls.name: cls for cls in (TensorBoardTracker, MlflowTracker)}


class Trackers:
    """The run's trackers (none: every call does nothing)."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)

    @classmethod
    def open(cls, config: RunConfig, run_dir: Path) -> Trackers:
        return cls([TRACKERS[name](config, Path(run_dir)) for name in config.output.trackers])

    def log_round(self, record: Mapping[str, Any]) -> None:
        if self.trackers:
            scalars = round_scalars(record)
            for tracker in self.trackers:
                tracker.log_metrics(scalars, int(record["round"]))

    def finish(self, artifacts: Sequence[Path]) -> None:
        for tracker in self.trackers:
            tracker.log_artifacts(artifacts)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
