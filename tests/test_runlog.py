"""The run folder's checkpoints as ``read_checkpoint`` finds them: each unusable file is
refused with one line naming it (restoring them into a server: tests/federation/test_server.py)."""

import pytest
import torch


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("nothing", r"no checkpoint at .*checkpoints/last.safetensors \(expected a run folder"),
        ("garbage", r"is not a readable safetensors checkpoint"),
        ("no_round", r"has no round number >= 1 in its metadata"),
        ("foreign_key", r"unexpected key 'weights' \(expected global/<key> or server/<key>\)"),
        ("torn_pair", r"last-clients.safetensors is from round '1' but .* from round 2: the run stopped"),
    ],
)
def test_read_checkpoint_errors_name_the_file(tmp_path, setup, fragment):
    from safetensors.torch import save_file

    from fedumm.errors import ConfigError
    from fedumm.runlog import RunFolder, read_checkpoint

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    path = directory / "last.safetensors"
    if setup == "garbage":
        path.write_bytes(b"not safetensors")
    elif setup == "no_round":
        save_file({"global/w": torch.zeros(1)}, str(path))
    elif setup == "foreign_key":
        save_file({"weights": torch.zeros(1)}, str(path), metadata={"round": "1"})
    elif setup == "torn_pair":
        folder = RunFolder(tmp_path)
        folder.save_checkpoint(1, {"w": torch.zeros(1)}, {}, client_states={})
        clients = (directory / "last-clients.safetensors").read_bytes()
        folder.save_checkpoint(2, {"w": torch.zeros(1)}, {}, client_states={})
        (directory / "last-clients.safetensors").write_bytes(clients)  # as if round 2 stopped in between
    with pytest.raises(ConfigError, match=r"federation.resume_from: .*" + fragment):
        read_checkpoint(tmp_path)
