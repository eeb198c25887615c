"""The run folder: ``runs/<name>/`` with the resolved config, one JSON line of metrics per
round, the partition summary, checkpoints and the final adapter in PEFT format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedumm.config import RunConfig, save_config
from fedumm.errors import ConfigError


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers never see a half-written file


class RunFolder:
    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def path_for(config: RunConfig) -> Path:
        return Path(config.output.dir) / (config.output.name or config.name)

    @classmethod
    def check_available(cls, config: RunConfig) -> Path:
        """Fail early, before any work, if the run would replace an earlier one by accident."""
        path = cls.path_for(config)
        if path.exists() and any(path.iterdir()) and not config.output.overwrite:
            raise ConfigError(
                f"output: run folder {path} already exists; set output.overwrite=true "
                "or choose another output.name"
            )
        return path

    @classmethod
    def create(cls, config: RunConfig) -> RunFolder:
        path = cls.check_available(config)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        save_config(config, path / "config.yaml")
        return folder

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
        return path

    def save_checkpoint(self, round_num: int, global_state: dict[str, torch.Tensor],
                        server_state: dict[str, torch.Tensor]) -> Path:
        """Latest global adapter + strategy state, so a run can be inspected or resumed."""
        directory = self.path / "checkpoints"
        directory.mkdir(exist_ok=True)
        tensors = {f"global/{k}": v.contiguous() for k, v in global_state.items()}
        tensors.update({f"server/{k}": v.contiguous() for k, v in server_state.items()})
        path = directory / "last.safetensors"
        tmp = directory / ".last.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"round": str(round_num)})
        os.replace(tmp, path)
        return path

    def save_adapter(self, peft_model: torch.nn.Module, name: str = "adapter") -> Path:
        """PEFT format: loads with ``PeftModel.from_pretrained(base, path)``."""
        path = self.path / name
        tmp = self.path / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path
