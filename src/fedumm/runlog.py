"""The run folder: ``runs/<name>/`` with the resolved config, one JSON line of metrics per
round, the partition summary, checkpoints and the final adapter in PEFT format.

A checkpoint is two safetensors files written after every federated round:
``checkpoints/last.safetensors`` (``global/<key>``: the global adapter, ``server/<key>``: the
strategy's ``state_dict``; metadata: round, phase, strategy, num_clients) and
``checkpoints/last-clients.safetensors`` (``client/<id>/<key>``: each client's algorithm state
such as SCAFFOLD's c_i, ``local/<id>/<key>``: its kept-local units; empty where the server
holds no client state, as under NVIDIA FLARE, whose sites keep their own). ``read_checkpoint``
loads both for ``federation.resume_from``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fedumm.config import RunConfig, save_config
from fedumm.errors import ConfigError
from fedumm.types import State

CHECKPOINT = "last"  # the federated phase's checkpoint name (centralized: centralized_last)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers never see a half-written file


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def clients_path(checkpoint: Path) -> Path:
    """``.../last.safetensors`` -> ``.../last-clients.safetensors``."""
    return checkpoint.with_name(f"{checkpoint.name.removesuffix('.safetensors')}-clients.safetensors")


@dataclass
class Checkpoint:
    """A federated checkpoint as ``read_checkpoint`` found it."""

    path: Path
    round: int
    global_state: State
    server_state: State
    metadata: dict[str, str]
    client_states: dict[int, State] = field(default_factory=dict)  # algorithm state per client id
    local_states: dict[int, State] = field(default_factory=dict)  # kept-local units per client id
    clients_saved: bool = False  # False: no clients file, or one written by a server without client state

    def check_config(self, config: RunConfig, num_clients: int) -> None:
        """What the metadata tells without a model: same strategy and clients, rounds left."""
        where = f"federation.resume_from: {self.path}"
        name, meta = config.federation.strategy.name, self.metadata
        if meta.get("strategy", name) != name:
            raise ConfigError(
                f"{where} was written by strategy {meta['strategy']!r}, but federation.strategy.name is {name!r}"
            )
        if meta.get("num_clients", str(num_clients)) != str(num_clients):
            raise ConfigError(
                f"{where} is from a run with {meta['num_clients']} clients, but federation.num_clients is {num_clients}"
            )
        if self.round >= config.federation.rounds:
            raise ConfigError(
                f"{where} is at round {self.round} and federation.rounds is "
                f"{config.federation.rounds}: nothing left to run; raise federation.rounds"
            )

    @property
    def run_dir(self) -> Path | None:
        """The run folder the checkpoint belongs to (``<run>/checkpoints/<name>.safetensors``)."""
        folder = self.path.parent.parent
        if self.path.parent.name == "checkpoints" and (folder / "metrics.jsonl").is_file():
            return folder
        return None


def _read_tensors(path: Path) -> tuple[State, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"federation.resume_from: {path} is not a readable safetensors checkpoint ({exc})") from None


def _split_clients(tensors: State, path: Path) -> tuple[dict[int, State], dict[int, State]]:
    parts: dict[str, dict[int, State]] = {"client": {}, "local": {}}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        cid, _, key = rest.partition("/")
        if kind not in parts or not cid.isdigit() or not key:
            raise ConfigError(
                f"federation.resume_from: {path}: unexpected key {name!r} "
                "(expected client/<id>/<key> or local/<id>/<key>)"
            )
        parts[kind].setdefault(int(cid), {})[key] = tensor
    return parts["client"], parts["local"]


def read_checkpoint(location: str | Path) -> Checkpoint:
    """A checkpoint from a run folder (its ``checkpoints/last.safetensors``) or a file path."""
    path = Path(location)
    if path.is_dir():
        path = path / "checkpoints" / f"{CHECKPOINT}.safetensors"
    if not path.is_file():
        raise ConfigError(
            f"federation.resume_from: no checkpoint at {path} (expected a run folder with "
            f"checkpoints/{CHECKPOINT}.safetensors, or a .safetensors checkpoint file)"
        )
    tensors, metadata = _read_tensors(path)
    round_text = metadata.get("round", "")
    if not round_text.isdigit() or int(round_text) < 1:
        raise ConfigError(
            f"federation.resume_from: {path} has no round number >= 1 in its metadata "
            f"(got {round_text!r}); is it a fedumm checkpoint?"
        )
    if metadata.get("phase", "federated") != "federated":
        raise ConfigError(
            f"federation.resume_from: {path} is a {metadata['phase']} checkpoint; "
            f"only the federated phase resumes (checkpoints/{CHECKPOINT}.safetensors)"
        )
    global_state: State = {}
    server_state: State = {}
    for name, tensor in tensors.items():
        part, _, key = name.partition("/")
        if part == "global" and key:
            global_state[key] = tensor
        elif part == "server" and key:
            server_state[key] = tensor
        else:
            raise ConfigError(
                f"federation.resume_from: {path}: unexpected key {name!r} (expected global/<key> or server/<key>)"
            )
    if not global_state:
        raise ConfigError(f"federation.resume_from: {path} holds no global/* adapter tensors")
    checkpoint = Checkpoint(path, int(round_text), global_state, server_state, metadata)
    companion = clients_path(path)
    if companion.is_file():
        client_tensors, client_meta = _read_tensors(companion)
        if client_meta.get("round") != round_text:
            raise ConfigError(
                f"federation.resume_from: {companion} is from round {client_meta.get('round')!r} but {path} from "
                f"round {round_text}: the run stopped between the two writes; resume from an intact pair"
            )
        checkpoint.client_states, checkpoint.local_states = _split_clients(client_tensors, companion)
        checkpoint.clients_saved = client_meta.get("clients") == "saved"
    return checkpoint


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
                f"output: run folder {path} already exists; set output.overwrite=true or choose another output.name"
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
        atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
        return path

    def save_checkpoint(
        self,
        round_num: int,
        global_state: State,
        server_state: State,
        *,
        client_states: dict[int, State] | None = None,
        local_states: dict[int, State] | None = None,
        strategy: str | None = None,
        num_clients: int | None = None,
        phase: str = "federated",
    ) -> Path:
        """Latest global adapter + strategy state (and the clients' state where the caller holds
        it: ``None`` = not held here), so a run can be inspected or resumed."""
        directory = self.path / "checkpoints"
        directory.mkdir(exist_ok=True)
        name = CHECKPOINT if phase == "federated" else f"{phase}_{CHECKPOINT}"
        path = directory / f"{name}.safetensors"
        meta = {"round": str(round_num), "phase": phase}
        clients: dict[str, torch.Tensor] = {}
        for kind, states in (("client", client_states), ("local", local_states)):
            for cid, state in (states or {}).items():
                clients.update({f"{kind}/{cid}/{k}": v.detach().cpu().contiguous() for k, v in state.items()})
        held = client_states is not None or local_states is not None
        # The clients file first: a pair with different rounds is refused on resume.
        _save_atomic(clients, clients_path(path), {**meta, "clients": "saved" if held else "not held by the server"})
        if strategy is not None:
            meta["strategy"] = strategy
        if num_clients is not None:
            meta["num_clients"] = str(num_clients)
        tensors = {f"global/{k}": v.detach().cpu().contiguous() for k, v in global_state.items()}
        tensors.update({f"server/{k}": v.detach().cpu().contiguous() for k, v in server_state.items()})
        _save_atomic(tensors, path, meta)
        return path

    @classmethod
    def reopen(cls, config: RunConfig, round_num: int) -> RunFolder:
        """Continue an existing run folder in place after round ``round_num``: its metrics keep
        the federated records up to that round (later ones, and a centralized phase, are dropped:
        they run again) and config.yaml becomes the resumed config."""
        folder = cls(cls.path_for(config))
        folder.rewrite_metrics(folder.records_through(round_num))
        save_config(config, folder.path / "config.yaml")
        return folder

    def records_through(self, round_num: int) -> list[dict[str, Any]]:
        """This folder's federated records of rounds 0..round_num."""
        return [r for r in self.read_metrics() if r.get("phase") == "federated" and r.get("round", 0) <= round_num]

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.metrics_path, text.encode())

    def save_adapter(self, host, name: str = "adapter") -> Path:
        """``host.save_pretrained`` (a ``ModelHost``: the PEFT folder plus any parameters trained
        in place) into ``name``, written to a temporary folder first so a crash keeps the old one."""
        path = self.path / name
        tmp = self.path / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        host.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path
