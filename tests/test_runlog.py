"""The run folder: checkpoints as ``read_checkpoint`` finds them (each unusable file is refused
with one line naming it; restoring them into a server: tests/federation/test_server.py), the one
atomic checkpoint file, metrics.jsonl after a kill, and what output.overwrite may replace."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedumm.errors import ConfigError
from fedumm.runlog import MARKER, RunFolder, atomic_write_bytes, read_checkpoint
from fedumm.validation import load_run_config


def _legacy_pair(directory, round_num, clients_round=None):
    """The two-file layout of earlier versions: global/server state + a clients file."""
    save_file(
        {"global/w": torch.full((2,), float(round_num)), "server/m/w": torch.ones(2)},
        str(directory / "last.safetensors"),
        metadata={"round": str(round_num), "phase": "federated", "strategy": "scaffold", "num_clients": "2"},
    )
    save_file(
        {"client/1/w": torch.tensor([0.25, 0.5]), "local/0/head": torch.ones(3)},
        str(directory / "last-clients.safetensors"),
        metadata={"round": str(clients_round or round_num), "phase": "federated", "clients": "saved"},
    )


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("nothing", r"no checkpoint at .*checkpoints/last.safetensors \(expected a run folder"),
        ("garbage", r"is not a readable safetensors checkpoint"),
        ("no_round", r"has no round number >= 1 in its metadata"),
        ("foreign_key", r"unexpected key 'weights' \(expected global/<key> or server/<key>\)"),
        (
            "foreign_key_one_file",
            r"unexpected key 'client/x/w' "
            r"\(expected global/<key>, server/<key>, client/<id>/<key>, local/<id>/<key> or residual/<id>/<key>\)",
        ),
        ("torn_pair", r"last-clients.safetensors is from round '1' but .* from round 2: the run stopped"),
    ],
)
def test_read_checkpoint_errors_name_the_file(tmp_path, setup, fragment):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    path = directory / "last.safetensors"
    if setup == "garbage":
        path.write_bytes(b"not safetensors")
    elif setup == "no_round":
        save_file({"global/w": torch.zeros(1)}, str(path))
    elif setup == "foreign_key":
        save_file({"weights": torch.zeros(1)}, str(path), metadata={"round": "1"})
    elif setup == "foreign_key_one_file":
        save_file(
            {"global/w": torch.zeros(1), "client/x/w": torch.zeros(1)}, str(path), {"round": "1", "clients": "saved"}
        )
    elif setup == "torn_pair":
        _legacy_pair(directory, 2, clients_round=1)  # an earlier version stopped between its two writes
    with pytest.raises(ConfigError, match=r"federation.resume_from: .*" + fragment):
        read_checkpoint(tmp_path)


def test_one_file_holds_server_and_client_state_as_a_unit(tmp_path):
    # Prepare: a run folder that still has an earlier version's clients file.
    folder = RunFolder(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    _legacy_pair(tmp_path / "checkpoints", 1)
    # Execute
    path = folder.save_checkpoint(
        2,
        {"w": torch.tensor([1.5, -2.0])},
        {"m/w": torch.tensor([0.5, 0.5])},
        client_states={1: {"w": torch.tensor([0.25, 0.5])}},
        local_states={0: {"head": torch.arange(3.0)}},
        strategy="scaffold",
        num_clients=2,
    )
    # Assert: one file, every part under its prefix, the metadata, no temporary, no stale pair.
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == ["client/1/w", "global/w", "local/0/head", "server/m/w"]
        assert fh.metadata() == {
            "round": "2",
            "phase": "federated",
            "clients": "saved",
            "strategy": "scaffold",
            "num_clients": "2",
        }
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.safetensors"]
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.round == 2 and checkpoint.clients_saved and checkpoint.clients_file == path
    assert torch.equal(checkpoint.global_state["w"], torch.tensor([1.5, -2.0]))
    assert torch.equal(checkpoint.server_state["m/w"], torch.tensor([0.5, 0.5]))
    assert torch.equal(checkpoint.client_states[1]["w"], torch.tensor([0.25, 0.5]))
    assert torch.equal(checkpoint.local_states[0]["head"], torch.arange(3.0))


def test_a_server_without_client_state_says_so(tmp_path):
    RunFolder(tmp_path).save_checkpoint(1, {"w": torch.zeros(1)}, {}, strategy="fedavg", num_clients=3)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert checkpoint.metadata["clients"] == "not held by the server"
    assert not checkpoint.clients_saved and checkpoint.client_states == {} and checkpoint.local_states == {}


def test_the_two_file_layout_of_earlier_versions_still_reads(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    _legacy_pair(tmp_path / "checkpoints", 3)
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.round == 3 and checkpoint.clients_saved
    assert checkpoint.clients_file == tmp_path / "checkpoints" / "last-clients.safetensors"
    assert torch.equal(checkpoint.global_state["w"], torch.full((2,), 3.0))
    assert torch.equal(checkpoint.client_states[1]["w"], torch.tensor([0.25, 0.5]))
    assert torch.equal(checkpoint.local_states[0]["head"], torch.ones(3))


def test_atomic_writes_fsync_and_leave_no_temporary(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write_bytes(tmp_path / "summary.json", b"{}\n")
    assert (tmp_path / "summary.json").read_bytes() == b"{}\n"
    assert len(synced) == 2  # the file, then the folder holding the rename
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_append_metrics_fsyncs_every_line(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    folder = RunFolder(tmp_path)
    folder.append_metrics({"round": 0})
    folder.append_metrics({"round": 1})
    assert len(synced) == 2 and folder.read_metrics() == [{"round": 0}, {"round": 1}]


# ---------------------------------------------------------------- metrics.jsonl after a kill


@pytest.mark.parametrize("torn", ['{"phase": "federated", "rou', '{"phase": "federated", "round": 2}', "}{\n"])
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, torn):
    # Prepare: two intact records, then a cut-short append (or an intact one without its newline).
    folder = RunFolder(tmp_path)
    folder.append_metrics({"phase": "federated", "round": 0})
    folder.append_metrics({"phase": "federated", "round": 1})
    with folder.metrics_path.open("a") as fh:
        fh.write(torn)
    # Execute / Assert
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped its torn last line 3"):
        records = folder.read_metrics()
    assert [r["round"] for r in records] == [0, 1]


def test_a_bad_metrics_line_elsewhere_names_file_and_line(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text('{"round": 0}\n[1, 2]\n{"round": 2}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        folder.read_metrics()


def test_reopen_drops_the_torn_line_and_the_temporaries(tmp_path):
    # Prepare: a run killed while appending round 2's record and while writing a checkpoint and the adapter.
    config = load_run_config(None, [f"output.dir={tmp_path}", "output.name=run", "federation.rounds=3"])
    folder = RunFolder.create(config)
    folder.append_metrics({"phase": "federated", "round": 0})
    folder.append_metrics({"phase": "federated", "round": 1})
    folder.save_checkpoint(1, {"w": torch.zeros(1)}, {}, strategy="fedavg", num_clients=4)
    with folder.metrics_path.open("a") as fh:
        fh.write('{"phase": "federated", "ro')
    (folder.path / "checkpoints" / ".last.safetensors.tmp").write_bytes(b"half")
    (folder.path / ".adapter.tmp").mkdir()
    (folder.path / ".adapter.tmp" / "adapter_model.safetensors").write_bytes(b"half")
    # Execute
    with pytest.warns(UserWarning, match="torn last line 3"):
        reopened = RunFolder.reopen(config, 1)
    # Assert
    assert (
        reopened.metrics_path.read_text() == '{"phase": "federated", "round": 0}\n{"phase": "federated", "round": 1}\n'
    )
    assert sorted(p.name for p in folder.path.iterdir()) == [MARKER, "checkpoints", "config.yaml", "metrics.jsonl"]
    assert [p.name for p in (folder.path / "checkpoints").iterdir()] == ["last.safetensors"]


def test_save_adapter_swaps_the_folder_and_leaves_no_temporary(tmp_path):
    class Host:
        def __init__(self, text):
            self.text = text

        def save_pretrained(self, path):
            os.makedirs(path)
            with open(os.path.join(path, "adapter_model.safetensors"), "w") as fh:
                fh.write(self.text)

    folder = RunFolder(tmp_path)
    folder.save_adapter(Host("old"))
    (tmp_path / ".adapter.tmp").mkdir()  # left by a killed run
    path = folder.save_adapter(Host("new"))
    assert (path / "adapter_model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


# ---------------------------------------------------------------- what output.overwrite may replace


def _config(tmp_path, *extra):
    return load_run_config(None, [f"output.dir={tmp_path / 'runs'}", "output.name=run", *extra])


def test_create_writes_the_marker_and_overwrite_replaces_a_run_folder(tmp_path):
    first = RunFolder.create(_config(tmp_path))
    (first.path / "metrics.jsonl").write_text('{"round": 0}\n')
    assert (first.path / MARKER).is_file() and (first.path / "config.yaml").is_file()
    with pytest.raises(ConfigError, match=r"run folder .*runs/run already exists; set output.overwrite=true"):
        RunFolder.create(_config(tmp_path))
    again = RunFolder.create(_config(tmp_path, "output.overwrite=true"))
    assert sorted(p.name for p in again.path.iterdir()) == [MARKER, "config.yaml"]


def test_overwrite_refuses_a_folder_that_is_no_run_folder(tmp_path):
    # Prepare: someone's own folder where the run folder would go.
    own = tmp_path / "runs" / "run"
    own.mkdir(parents=True)
    (own / "thesis.tex").write_text("years of work")
    # Execute / Assert: one clear line, nothing deleted.
    with pytest.raises(ConfigError) as info:
        RunFolder.create(_config(tmp_path, "output.overwrite=true"))
    assert str(info.value) == (
        f"output.overwrite: {own} is not a fedumm run folder (no {MARKER} file): refusing to replace it; "
        "move it away or choose another output.name"
    )
    assert (own / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_overwrite_refuses_a_symlink_or_a_file(tmp_path, kind):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / MARKER).write_text("")  # even a run folder is not replaced through a link
    (target / "keep.txt").write_text("keep")
    (tmp_path / "runs").mkdir()
    place = tmp_path / "runs" / "run"
    if kind == "symlink":
        place.symlink_to(target, target_is_directory=True)
    else:
        place.write_text("a file")
    with pytest.raises(
        ConfigError, match=rf"output: .*runs/run is a {'symbolic link' if kind == 'symlink' else 'file'}"
    ):
        RunFolder.create(_config(tmp_path, "output.overwrite=true"))
    assert (target / "keep.txt").read_text() == "keep"
    assert place.is_symlink() if kind == "symlink" else place.read_text() == "a file"


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "..\\x", "/abs"])
def test_output_name_must_be_one_path_component(tmp_path, name):
    # Prepare: files beside and above where the run folder would go.
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other.txt").write_text("keep")
    (tmp_path / "mine.txt").write_text("keep")
    # Execute / Assert: the config is refused before anything is touched.
    with pytest.raises(ConfigError, match=r"output.name: must be a single folder name under output.dir"):
        _config(tmp_path, f"output.name={json.dumps(name)}", "output.overwrite=true")
    assert (tmp_path / "runs" / "other.txt").read_text() == "keep" and (tmp_path / "mine.txt").read_text() == "keep"


def test_a_config_name_that_is_no_folder_name_is_refused_as_the_folder(tmp_path):
    config = load_run_config(None, [f"output.dir={tmp_path}", "name=../up", "output.overwrite=true"])
    with pytest.raises(ConfigError, match=r"^name: must be a single folder name .* set output.name$"):
        RunFolder.create(config)
    assert list(tmp_path.iterdir()) == []


def test_a_kill_while_replacing_a_run_leaves_a_replaceable_folder(tmp_path, monkeypatch):
    import fedumm.runlog as runlog

    # Prepare: an earlier run with a checkpoint and a summary; the replacement dies after its first removal.
    first = RunFolder.create(_config(tmp_path))
    first.save_checkpoint(1, {"w": torch.zeros(1)}, {}, strategy="fedavg", num_clients=4)
    first.write_json("summary.json", {})
    first.append_metrics({"round": 0})
    real_remove, removed = runlog._remove, []

    def dying_remove(path):
        if removed:
            raise KeyboardInterrupt  # stands in for SIGKILL
        removed.append(path)
        real_remove(path)

    monkeypatch.setattr(runlog, "_remove", dying_remove)
    with pytest.raises(KeyboardInterrupt):
        RunFolder.create(_config(tmp_path, "output.overwrite=true"))
    # Assert: the checkpoint went first (never half resumable); marker and config.yaml stay (still replaceable).
    assert removed == [first.path / "checkpoints" / "last.safetensors"]
    assert (first.path / MARKER).is_file() and (first.path / "config.yaml").is_file()
    assert (first.path / "summary.json").is_file()  # the kill came before the rest went
    monkeypatch.setattr(runlog, "_remove", real_remove)
    again = RunFolder.create(_config(tmp_path, "output.overwrite=true"))
    assert sorted(p.name for p in again.path.iterdir()) == [MARKER, "config.yaml"]


def test_error_feedback_residuals_are_saved_and_read_per_client(tmp_path):
    # Prepare/Execute: a checkpoint with client 1's residual (federation.compression.error_feedback).
    path = RunFolder(tmp_path).save_checkpoint(
        3,
        {"w": torch.tensor([1.0, 2.0])},
        {},
        residual_states={1: {"w": torch.tensor([0.125, -0.5])}},
        strategy="fedavg",
        num_clients=2,
    )
    # Assert: stored as residual/<id>/<key>, read back bit for bit, counted as client state saved.
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == ["global/w", "residual/1/w"]
        assert fh.metadata()["clients"] == "saved"
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.clients_saved
    assert torch.equal(checkpoint.residual_states[1]["w"], torch.tensor([0.125, -0.5]))
    assert checkpoint.client_states == {} and checkpoint.local_states == {}
