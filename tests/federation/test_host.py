"""ModelHost.generate_images: the eval config's guidance and temperature, generation backends only."""

from __future__ import annotations

import pytest

from fedumm.errors import ConfigError
from fedumm.federation import ModelHost
from fedumm.validation import load_run_config


def _host(*overrides: str) -> ModelHost:
    return ModelHost(load_run_config(None, ["model.device=cpu", *overrides]))


def test_generate_images_samples_with_the_eval_settings():
    host = _host("model.backend=janus", "eval.cfg_scale=1", "eval.image_temperature=0")

    greedy = host.generate_images(["a red square", "a blue circle"], seed=0)
    other_seed = host.generate_images(["a red square", "a blue circle"], seed=5)

    assert [i.size for i in greedy] == [(32, 32), (32, 32)]
    # Temperature 0 is greedy: the seed cannot matter.
    assert [i.tobytes() for i in greedy] == [i.tobytes() for i in other_seed]


def test_an_understanding_backend_cannot_generate(tiny_llava_path):
    host = _host(f"model.name_or_path={tiny_llava_path}")
    with pytest.raises(ConfigError, match="model.backend: hf_vlm does not generate images"):
        host.generate_images(["a red square"], seed=0)
