"""Shared fixtures: a per-session model cache, so tiny models are built once and nothing
is read from (or written to) the user's ~/.cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_model_cache(tmp_path_factory):
    previous = os.environ.get("FEDUMM_CACHE")
    os.environ["FEDUMM_CACHE"] = str(tmp_path_factory.mktemp("fedumm-cache"))
    yield
    if previous is None:
        os.environ.pop("FEDUMM_CACHE", None)
    else:
        os.environ["FEDUMM_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_llava_path(_isolated_model_cache) -> str:
    from fedumm.models.tiny import resolve_model_path

    return resolve_model_path("tiny-llava")


@pytest.fixture()
def model_config(tiny_llava_path):
    from fedumm.config import ModelConfig

    return ModelConfig(backend="hf_vlm", name_or_path=tiny_llava_path, device="cpu")


@pytest.fixture()
def lora_model(model_config):
    """A fresh tiny LLaVA wrapped with the default LoRA adapter, plus its backend."""
    import torch

    from fedumm.adapters import apply_lora
    from fedumm.config import AdapterConfig
    from fedumm.models.registry import get_backend

    backend = get_backend("hf_vlm")(model_config)
    torch.manual_seed(0)
    model = apply_lora(backend.load(), AdapterConfig(dropout=0.0), backend.lora_target_regex(AdapterConfig()))
    return model, backend
