"""engine.* settings and the runner's preflight (local_engine_config): one-line errors naming the key (no FLARE
needed)."""

from __future__ import annotations

import os
import stat

import pytest

from fedumm.engines.nvflare.runner import local_engine_config
from fedumm.errors import ConfigError
from fedumm.validation import load_run_config


def test_defaults_keep_the_in_process_engine():
    config = load_run_config(None, [])
    assert config.engine.name == "simulation"
    assert config.engine.python is None and config.engine.client_command is None and config.engine.sites == {}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["engine.python=/usr/bin/python3"], "engine.python: only used with engine.name=nvflare"),
        (
            ["engine.name=nvflare", "engine.python=python3", "engine.client_command=bash x.sh"],
            "engine.python and engine.client_command are exclusive",
        ),
        (["engine.name=nvflare", "engine.python="], "engine.python: must not be empty"),
        (
            ["engine.name=nvflare", "engine.sites={site-1: {}}"],
            "engine.sites lists 1 sites but federation.num_clients is 4",
        ),
        (
            ["engine.name=nvflare", "federation.num_clients=1", "engine.sites={'bad site': {}}"],
            "engine.sites: 'bad site' is not a valid site name",
        ),
        (
            [
                "engine.name=nvflare",
                "federation.num_clients=1",
                "engine.data_placement=partition",
                "engine.sites={site-1: {}}",
            ],
            "engine.sites: only used with engine.data_placement=site",
        ),
        (
            ["engine.name=nvflare", "federation.num_clients=1", "engine.sites={site-1: {data: {source: nope}}}"],
            "engine.sites.site-1.data.source",
        ),
        (["engine.name=nvflare", "engine.task_request_interval=0"], "engine.task_request_interval"),
        (["engine.name=flower"], "engine.name: must be one of 'simulation' or 'nvflare'"),
    ],
)
def test_bad_engine_settings_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_missing_interpreter_names_engine_python(tmp_path):
    config = load_run_config(None, ["engine.name=nvflare", f"engine.python={tmp_path}/no/such/python"])
    with pytest.raises(ConfigError, match=r"^engine.python: .*/no/such/python is not an executable file$"):
        local_engine_config(config)


def test_unknown_client_command_names_the_key():
    config = load_run_config(None, ["engine.name=nvflare", "engine.client_command=no-such-launcher --env x"])
    with pytest.raises(ConfigError, match=r"^engine.client_command: 'no-such-launcher' not found on PATH$"):
        local_engine_config(config)


def test_local_paths_become_absolute_and_cores_are_shared(tmp_path, monkeypatch):
    script = tmp_path / "launch.sh"
    script.write_text('#!/bin/sh\nexec python3 "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.chdir(tmp_path)
    config = load_run_config(
        None, ["engine.name=nvflare", "federation.num_clients=2", "engine.client_command=bash launch.sh --flag"]
    )
    local = local_engine_config(config)
    assert local.engine.client_command.split()[1:] == [str(script), "--flag"]
    assert local.engine.client_command.split()[0].endswith("bash")
    assert local.engine.torch_threads == max(1, (os.cpu_count() or 1) // 2)
    assert config.engine.torch_threads is None  # the caller's config is untouched
