"""The tiny-model registry: registration, the built-in names, and resolve_model_path's cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedumm
from fedumm.errors import ConfigError
from fedumm.models import tiny
from fedumm.models.tiny import TINY_MODELS, TINY_PARTS, register_tiny, register_tiny_part, resolve_model_path

BUILT_IN = [
    "tiny-llava",
    "tiny-llava-next",
    "tiny-qwen2-vl",
    "tiny-qwen2.5-vl",
    "tiny-idefics3",
    "tiny-smolvlm",
    "tiny-paligemma",
    "tiny-janus",
    "tiny-minicpm-v",
    "tiny-minicpm-v4.7",
    "tiny-blip-vqa",
    "tiny-emu3",
]


def test_the_built_in_models_are_registered_in_order():
    assert list(TINY_MODELS) == BUILT_IN


def test_the_built_in_parts_are_registered_apart_from_the_models():
    assert list(TINY_PARTS) == ["tiny-clip-vision", "tiny-llama"]
    assert not set(TINY_PARTS) & set(TINY_MODELS)


def test_a_part_name_cannot_reuse_a_model_name_or_a_part_name():
    with pytest.raises(ValueError, match="tiny part 'tiny-llava' is already registered by build_tiny_llava"):
        register_tiny_part("tiny-llava", lambda path: None)
    with pytest.raises(ValueError, match="tiny model 'tiny-llama' is already registered by build_tiny_llama"):
        register_tiny("tiny-llama", lambda path: None)
    assert list(TINY_PARTS) == ["tiny-clip-vision", "tiny-llama"]


def test_registering_a_name_twice_fails():
    before = dict(TINY_MODELS)
    with pytest.raises(ValueError, match="tiny model 'tiny-llava' is already registered by build_tiny_llava"):
        register_tiny("tiny-llava", lambda path: None)
    with pytest.raises(ValueError, match="already registered"):
        register_tiny("tiny-llava")(lambda path: None)
    assert TINY_MODELS == before


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEDUMM_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def toy():
    """A registered toy builder that writes a config.json and counts its calls; unregistered after."""
    calls = []

    @register_tiny("tiny-toy")
    def build_tiny_toy(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
        calls.append(path)
        (path / "config.json").write_text(json.dumps({"model_type": "toy", "seed": seed}))

    try:
        yield calls
    finally:
        del TINY_MODELS["tiny-toy"]


def test_a_registered_builder_resolves_into_the_cache_once(cache, toy):
    path = Path(resolve_model_path("tiny-toy"))
    assert path == cache / "models" / f"tiny-toy-v{tiny._TINY_VERSION}"
    assert json.loads((path / "config.json").read_text()) == {"model_type": "toy", "seed": 0}
    assert resolve_model_path("tiny-toy") == str(path)
    assert len(toy) == 1 and toy[0] != path  # built in a temp folder, then renamed
    assert sorted(p.name for p in (cache / "models").iterdir()) == [path.name]


def test_a_failing_builder_leaves_nothing_in_the_cache(cache):
    @register_tiny("tiny-broken")
    def build_tiny_broken(path: Path) -> None:
        (path / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            resolve_model_path("tiny-broken")
    finally:
        del TINY_MODELS["tiny-broken"]
    assert list((cache / "models").iterdir()) == []


def test_an_unknown_tiny_name_is_passed_on_as_a_hub_id(cache):
    # Not a registered name: treated like any hub id (the backend's load then reports it).
    assert resolve_model_path("tiny-nope") == "tiny-nope"
    assert not (cache / "models").exists()


def test_other_names_are_passed_on_or_rejected(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("org/model-1.5") == "org/model-1.5"
    with pytest.raises(ConfigError, match=r"model.name_or_path: no such folder './tiny-llava'"):
        resolve_model_path("./tiny-llava")


def test_importing_the_registry_is_cheap():
    code = "import sys, fedumm.models.tiny; print(' '.join(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(Path(fedumm.__file__).parents[1]))  # this checkout's src
    modules = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    modules = modules.stdout.split()
    # Importing any part of fedumm.models registers the backends (torch, the config), but no model
    # library loads until a model is built.
    heavy = ("transformers", "tokenizers", "peft")
    assert [m for m in modules if m.split(".")[0] in heavy] == []
    layers = ("fedumm.strategies", "fedumm.federation", "fedumm.engines", "fedumm.validation")
    assert [m for m in modules if m.startswith(layers)] == []


def test_a_model_version_entry_moves_that_model_alone(cache, toy, monkeypatch):
    monkeypatch.setitem(tiny._MODEL_VERSIONS, "tiny-toy", "99")
    assert Path(resolve_model_path("tiny-toy")) == cache / "models" / "tiny-toy-v99"
    assert tiny._MODEL_VERSIONS["tiny-emu3"] != tiny._TINY_VERSION  # tiny-emu3 moved to 64 px images alone
