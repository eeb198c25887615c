"""The registry checks that run after parsing, before anything loads."""

import subprocess
import sys

import pytest

from fedumm.config import load_config
from fedumm.errors import ConfigError
from fedumm.validation import load_run_config, validate


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.backend=nope"], r"model\.backend: unknown backend 'nope'; available: blip_vqa, emu3, hf_vlm, janus"),
        (["federation.strategy.name=nope"], r"federation\.strategy\.name: unknown strategy 'nope'"),
        (["federation.strategy.mu=0.1"], r"federation\.strategy\.mu: unknown key for this strategy"),
        (
            ["federation.strategy.name=krum", "federation.strategy.f=1", "federation.num_clients=4"],
            r"federation\.strategy\.f: ",
        ),
        (
            ["model.backend=blip_vqa", "finetune.strategy=custom", "finetune.groups={gen_head: share}"],
            r"finetune\.groups\.gen_head: not a unit of backend blip_vqa; known: lora, vision, connector, language$",
        ),
        (
            ["model.backend=janus", "finetune.strategy=custom", "finetune.groups={lora: share, audio: local}"],
            r"finetune\.groups\.audio: not a unit of backend janus; known: lora, vision, connector, language, "
            r"gen_embed, gen_aligner, gen_head, vq$",
        ),
    ],
)
def test_registry_problems_are_one_line_naming_the_key(overrides, fragment):
    parsed = load_config(None, overrides)  # parsing alone knows no registry
    with pytest.raises(ConfigError, match=rf"^invalid config <defaults>: {fragment}"):
        load_run_config(None, overrides)
    with pytest.raises(ConfigError, match=rf"^invalid config x\.yaml: {fragment}"):
        validate(parsed, "x.yaml")


def test_a_valid_config_passes_unchanged():
    config = load_config(None, ["federation.strategy.name=fedprox", "federation.strategy.mu=0.1"])
    assert validate(config) is config
    assert config.federation.strategy.params() == {"mu": 0.1}


@pytest.mark.parametrize("module", ["fedumm.config", "fedumm.strategies"])
def test_config_and_strategies_load_no_model_trainer_or_engine(module):
    prefixes = ("fedumm", "transformers", "peft")
    code = f"import {module}, sys; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    loaded = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded, "the probe printed nothing"
    assert not [
        m
        for m in loaded
        if m.startswith(
            ("fedumm.models", "fedumm.federation", "fedumm.engines", "fedumm.validation", "transformers", "peft")
        )
    ]
