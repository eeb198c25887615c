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
        (["model.backend=nope"], r"model\.backend: unknown backend 'nope'; available: blip_vqa, hf_vlm, janus"),
        (["federation.strategy.name=nope"], r"federation\.strategy\.name: unknown strategy 'nope'"),
        (["federation.strategy.mu=0.1"], r"federation\.strategy\.mu: unknown key for this strategy"),
        (
            ["federation.strategy.name=krum", "federation.strategy.f=1", "federation.num_clients=4"],
            r"federation\.strategy\.f: ",
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


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["federation.strategy.name=yoco"],
            r"federation\.strategy\.name=yoco: not with federation\.mode=rounds \(it runs in one_shot\); "
            r"federation\.mode=rounds takes fedadagrad, fedadam, fedavg, ",
        ),
        (
            ["federation.mode=one_shot", "federation.strategy.name=fedadam"],
            r"federation\.strategy\.name=fedadam: not with federation\.mode=one_shot \(it runs in rounds\); "
            r"federation\.mode=one_shot takes fedavg, fedprox, mean, ot_align, sign_conflict, yoco$",
        ),
        (
            ["federation.mode=one_shot", "privacy.level=client", "privacy.noise_multiplier=1.0"],
            r"federation\.mode=one_shot: not with privacy\.level=client: ",
        ),
        (
            ["federation.mode=one_shot", "eval.task=multitask"],
            r"federation\.mode=one_shot: not with eval\.task=multitask: ",
        ),
        (
            ["federation.mode=one_shot", "eval.task=t2i"],
            r"federation\.mode=one_shot: not with eval\.task=t2i: ",
        ),
        (
            ["federation.mode=one_shot", "privacy.secure_aggregation.threshold=2"],
            r"federation\.mode=one_shot: not with privacy\.secure_aggregation: ",
        ),
    ],
)
def test_one_shot_mode_problems_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError, match=rf"^invalid config <defaults>: {fragment}"):
        load_run_config(None, overrides)


@pytest.mark.parametrize("name", ["mean", "sign_conflict", "ot_align", "yoco", "fedavg"])
def test_one_shot_mode_takes_its_combiners(name):
    config = load_run_config(None, ["federation.mode=one_shot", f"federation.strategy.name={name}"])
    assert config.federation.rounds == 1 and config.federation.mode == "one_shot"
