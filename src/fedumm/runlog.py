"""The run folder: ``runs/<name>/`` with the resolved config, one JSON line of metrics per
round, the partition summary, checkpoints and the final adapter in PEFT format.

A checkpoint is ONE safetensors file written after every federated round,
``checkpoints/last.safetensors``: ``global/<key>`` (the global adapter), ``server/<key>`` (the
strategy's ``state_dict``), ``client/<id>/<key>`` (each client's algorithm state, such as
SCAFFOLD's c_i), ``local/<id>/<key>`` (its kept-local units) and ``residual/<id>/<key>`` (its error
feedback residual under ``federation.compression``); metadata: round, phase,
strategy, num_clients and ``clients`` ("saved", or "not held by the server", as under NVIDIA
FLARE, whose sites keep their own). Server and client state are one unit, written atomically
(temporary file, fsync, rename, fsync of the folder), so a kill at any instant leaves either the
previous checkpoint or the new one. ``read_checkpoint`` also reads the two-file layout of earlier
versions (``last.safetensors`` + ``last-clients.safetensors``).

Every other rewrite (config.yaml, summary.json, partition.json, metrics.jsonl on resume) goes
through ``atomic_write_bytes`` too; metrics.jsonl grows by fsynced appends, and a torn last line
(a kill in mid-append) is dropped with a warning when the run is read back.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fedumm.config import OutputConfig, RunConfig
from fedumm.errors import ConfigError
from fedumm.types import State

CHECKPOINT = "last"  # the federated phase's checkpoint name (centralized: centralized_last)
MARKER = ".fedumm-run"  # written when a run folder is created: only such folders are ever replaced
TMP_SUFFIX = ".tmp"  # temporary files and folders are ".<name>.tmp" beside their target


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder: written, flushed
    and fsynced, renamed over ``path``, then the folder fsynced. Readers (and a resume after a
    kill at any instant) see the old content or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_config(config: RunConfig, path: Path) -> None:
    """config.yaml, atomically: a resume after a kill must never read half a config."""
    atomic_write_bytes(path, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())


def clients_path(checkpoint: Path) -> Path:
    """``.../last.safetensors`` -> ``.../last-clients.safetensors`` (the clients file of the
    two-file layout of earlier versions)."""
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
    residual_states: dict[int, State] = field(default_factory=dict)  # error feedback residual per client id
    clients_saved: bool = False  # False: no client state, or written by a server without client state
    clients_file: Path | None = None  # where the client state was read from (the two-file layout: its clients file)
    # True when the checkpoint continues its own run folder in place (fedumm run --resume): a run
    # whose rounds are all done is then finished (adapter, summary) instead of refused.
    finish_allowed: bool = False

    def check_config(self, config: RunConfig, num_clients: int) -> None:
        """What the metadata tells without a model: same strategy and clients, rounds left (none
        left is fine where ``finish_allowed``; a checkpoint past federation.rounds never is)."""
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
        rounds = config.federation.rounds
        if self.round > rounds or (self.round == rounds and not self.finish_allowed):
            raise ConfigError(
                f"{where} is at round {self.round} and federation.rounds is {rounds}: nothing left to run; "
                "raise federation.rounds"
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


_KEY_FORMS = {
    "global": "global/<key>",
    "server": "server/<key>",
    "client": "client/<id>/<key>",
    "local": "local/<id>/<key>",
    "residual": "residual/<id>/<key>",
}


def _split(tensors: State, path: Path, kinds: tuple[str, ...]) -> dict[str, Any]:
    """``{"global": State, "server": State, "client": {id: State}, "local": {id: State}}`` (those of
    ``kinds``) from a checkpoint's prefixed keys; any other key is refused, naming the file."""
    parts: dict[str, Any] = {kind: {} for kind in kinds}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        if kind in ("global", "server") and kind in parts and rest:
            parts[kind][rest] = tensor
            continue
        cid, _, key = rest.partition("/")
        if kind in ("client", "local", "residual") and kind in parts and cid.isdigit() and key:
            parts[kind].setdefault(int(cid), {})[key] = tensor
            continue
        forms = [_KEY_FORMS[k] for k in kinds]
        expected = " or ".join(forms) if len(forms) < 3 else ", ".join(forms[:-1]) + f" or {forms[-1]}"
        raise ConfigError(f"federation.resume_from: {path}: unexpected key {name!r} (expected {expected})")
    return parts


def read_checkpoint(location: str | Path) -> Checkpoint:
    """A checkpoint from a run folder (its ``checkpoints/last.safetensors``) or a file path; the
    one-file layout, or the two-file layout of earlier versions (whose torn pair is refused)."""
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
    one_file = "clients" in metadata  # the two-file layout kept its clients flag in the clients file
    kinds = ("global", "server", "client", "local", "residual") if one_file else ("global", "server")
    parts = _split(tensors, path, kinds)
    if not parts["global"]:
        raise ConfigError(f"federation.resume_from: {path} holds no global/* adapter tensors")
    checkpoint = Checkpoint(path, int(round_text), parts["global"], parts["server"], metadata)
    if one_file:
        checkpoint.client_states, checkpoint.local_states = parts["client"], parts["local"]
        checkpoint.residual_states = parts["residual"]
        checkpoint.clients_saved, checkpoint.clients_file = metadata["clients"] == "saved", path
        return checkpoint
    companion = clients_path(path)
    if companion.is_file():
        client_tensors, client_meta = _read_tensors(companion)
        if client_meta.get("round") != round_text:
            raise ConfigError(
                f"federation.resume_from: {companion} is from round {client_meta.get('round')!r} but {path} from "
                f"round {round_text}: the run stopped between the two writes; resume from an intact pair"
            )
        clients = _split(client_tensors, companion, ("client", "local"))
        checkpoint.client_states, checkpoint.local_states = clients["client"], clients["local"]
        checkpoint.clients_saved = client_meta.get("clients") == "saved"
        checkpoint.clients_file = companion
    return checkpoint


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    # A copy: one file holds every part, and safetensors refuses tensors that share memory.
    return tensor.detach().to("cpu", copy=True).contiguous()


def _parse_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class RunFolder:
    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def path_for(config: RunConfig) -> Path:
        """``output.dir/<output.name or name>``; the folder name must be one path component."""
        if config.output.name is None:
            problem = OutputConfig.folder_name_problem(config.name)
            if problem:
                raise ConfigError(f"name: {problem} (got {config.name[:200]!r}); set output.name")
        return Path(config.output.dir) / (config.output.name or config.name)

    @classmethod
    def check_available(cls, config: RunConfig) -> Path:
        """Fail early, before any work, if the run would replace an earlier one by accident, or
        anything that is not a fedumm run folder under output.dir (``output.overwrite`` replaces
        only a folder holding the marker ``RunFolder.create`` writes)."""
        path = cls.path_for(config)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            kind = "a symbolic link" if path.is_symlink() else "a file"
            raise ConfigError(f"output: {path} is {kind}, not a run folder; choose another output.name or output.dir")
        if not path.exists() or not any(path.iterdir()):
            return path
        if not config.output.overwrite:
            raise ConfigError(
                f"output: run folder {path} already exists; set output.overwrite=true or choose another output.name"
            )
        marker = path / MARKER
        if marker.is_symlink() or not marker.is_file():
            raise ConfigError(
                f"output.overwrite: {path} is not a fedumm run folder (no {MARKER} file): refusing to replace it; "
                "move it away or choose another output.name"
            )
        if path.resolve().parent != Path(config.output.dir).resolve():
            raise ConfigError(
                f"output.overwrite: {path} does not lie directly under output.dir: refusing to replace it"
            )
        return path

    @classmethod
    def create(cls, config: RunConfig) -> RunFolder:
        """A new run folder, replacing an earlier run's where ``check_available`` allows it, in an
        order that leaves a replaceable folder, never a half-resumable one, at every instant: the
        marker first, then the earlier checkpoint and summary go (the folder no longer resumes,
        ``--resume`` starts it over), then config.yaml is replaced and the rest removed."""
        path = cls.check_available(config)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / MARKER, b"a fedumm run folder: output.overwrite=true may replace it\n")
        _remove(path / "checkpoints" / f"{CHECKPOINT}.safetensors")
        _remove(path / "summary.json")
        write_config(config, path / "config.yaml")
        for item in sorted(path.iterdir()):
            if item.name not in (MARKER, "config.yaml"):
                _remove(item)
        return cls(path)

    def remove_temporaries(self) -> list[Path]:
        """Remove what a killed run left half-written (``.<name>.tmp`` files and folders in the
        run folder and its checkpoints/); returns what was removed."""
        removed = []
        for folder in (self.path, self.path / "checkpoints"):
            if not folder.is_dir() or folder.is_symlink():
                continue
            for item in folder.iterdir():
                if item.name.startswith(".") and item.name.endswith(TMP_SUFFIX):
                    _remove(item)
                    removed.append(item)
        return removed

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line, flushed and fsynced before the round's checkpoint is written."""
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl. A torn last line (unterminated or not a JSON object: a
        kill in mid-append) is dropped with a warning naming the file; a bad line elsewhere is a
        ``ConfigError`` naming the file and line."""
        if not self.metrics_path.exists():
            return []
        text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        unterminated = bool(lines) and not text.endswith("\n")
        records = []
        for index, (number, line) in enumerate(lines):
            record = _parse_record(line)
            if index == len(lines) - 1 and (record is None or unterminated):
                warnings.warn(
                    f"{self.metrics_path}: dropped its torn last line {number} (the run stopped while writing it)",
                    stacklevel=2,
                )
                break
            if record is None:
                raise ConfigError(
                    f"{self.metrics_path}: line {number} is not a JSON record; repair or remove that line"
                )
            records.append(record)
        return records

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
        residual_states: dict[int, State] | None = None,
        strategy: str | None = None,
        num_clients: int | None = None,
        phase: str = "federated",
    ) -> Path:
        """One checkpoint file, written atomically: the global adapter and strategy state, and the
        clients' algorithm state, kept-local units and error feedback residuals where the caller
        holds them (``None`` = not held here, as under NVIDIA FLARE), so a run can be inspected or
        resumed."""
        directory = self.path / "checkpoints"
        directory.mkdir(exist_ok=True)
        name = CHECKPOINT if phase == "federated" else f"{phase}_{CHECKPOINT}"
        path = directory / f"{name}.safetensors"
        held = any(states is not None for states in (client_states, local_states, residual_states))
        meta = {"round": str(round_num), "phase": phase, "clients": "saved" if held else "not held by the server"}
        if strategy is not None:
            meta["strategy"] = strategy
        if num_clients is not None:
            meta["num_clients"] = str(num_clients)
        tensors = {f"global/{k}": _cpu(v) for k, v in global_state.items()}
        tensors.update({f"server/{k}": _cpu(v) for k, v in server_state.items()})
        for kind, states in (("client", client_states), ("local", local_states), ("residual", residual_states)):
            for cid, state in (states or {}).items():
                tensors.update({f"{kind}/{cid}/{k}": _cpu(v) for k, v in state.items()})
        atomic_write_bytes(path, save(tensors, metadata=meta))
        # An earlier version's clients file beside it is stale now (the one file wins on reading).
        clients_path(path).unlink(missing_ok=True)
        return path

    @classmethod
    def reopen(cls, config: RunConfig, round_num: int) -> RunFolder:
        """Continue an existing run folder in place after round ``round_num``: what a killed run
        left half-written is removed, its metrics keep the federated records up to that round
        (later ones, a torn last line and a centralized phase are dropped: they run again) and
        config.yaml becomes the resumed config."""
        folder = cls(cls.path_for(config))
        folder.remove_temporaries()
        folder.rewrite_metrics(folder.records_through(round_num))
        write_config(config, folder.path / "config.yaml")
        return folder

    def records_through(self, round_num: int) -> list[dict[str, Any]]:
        """This folder's federated records of rounds 0..round_num."""
        return [r for r in self.read_metrics() if r.get("phase") == "federated" and r.get("round", 0) <= round_num]

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.metrics_path, text.encode())

    def save_adapter(self, host, name: str = "adapter") -> Path:
        """``host.save_pretrained`` (a ``ModelHost``: the PEFT folder plus any parameters trained
        in place) into ``name``: written to ``.<name>.tmp`` and fsynced, then swapped in with two
        renames, so a kill leaves the old folder or the new one (or, between the renames, a
        resumable run whose next start removes the temporaries and writes it again)."""
        path = self.path / name
        tmp = self.path / f".{name}{TMP_SUFFIX}"
        old = self.path / f".{name}.old{TMP_SUFFIX}"
        _remove(tmp)
        _remove(old)
        host.save_pretrained(str(tmp))
        for item in tmp.rglob("*"):
            if item.is_file():
                with item.open("rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        _fsync_dir(self.path)
        _remove(old)
        return path
