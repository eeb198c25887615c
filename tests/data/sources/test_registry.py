"""Tests for the source registry (fedumm.data.sources): registration, lookup errors, and a toy source
registered here that loads through the same path as the built-in ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import Field, ValidationError

from fedumm.config import load_config
from fedumm.config_base import Section
from fedumm.data.config import DataConfig, data_config_model
from fedumm.data.federated import build_federated_data, load_source
from fedumm.data.sources import (
    LoadedSamples,
    SourceSpec,
    available_sources,
    get_source,
    register,
    unregister,
)
from fedumm.data.sources.hf import HFSourceConfig
from fedumm.data.sources.hf import load as load_hf
from fedumm.errors import ConfigError

BUILT_IN = ["synthetic", "hf", "llava_json", "client_files", "table", "crisismmd", "vqa_rad", "slake", "medalpaca"]
UNKNOWN = (
    "data.source: must be one of 'synthetic', 'hf', 'llava_json', 'client_files', 'table', 'crisismmd', "
    "'vqa_rad', 'slake' or 'medalpaca' (got 'csv')"
)


class ToyConfig(Section):
    word: str | None = None
    rows: int = Field(10, ge=1)


def load_toy(config: ToyConfig, seed: int) -> LoadedSamples:
    """``rows`` rows whose answer alternates between the word and its reverse; no test data."""
    answers = [config.word if i % 2 else config.word[::-1] for i in range(config.rows)]
    rows = [
        {"image": None, "question": f"q{i}", "answers": [a], "multiple_choice_answer": a, "seed": seed}
        for i, a in enumerate(answers)
    ]
    return LoadedSamples(rows, None)


TOY = SourceSpec("toy", ToyConfig, load_toy, required="word")


@pytest.fixture()
def toy_registered() -> Iterator[type[Section]]:
    """The toy source registered, and a data config model that has its section (DataConfig, built at
    import, does not); unregistered again afterwards."""
    register(TOY)
    try:
        yield data_config_model([get_source(name) for name in available_sources()], name="ToyDataConfig")
    finally:
        unregister("toy")


def test_built_in_sources_are_registered_in_order_and_have_their_sections() -> None:
    assert available_sources() == BUILT_IN
    assert list(DataConfig.model_fields)[: len(BUILT_IN) + 1] == ["source", *BUILT_IN]
    required = [None, "path", "path", "root", "path", "root", "path", "root", "path"]
    assert [get_source(name).required for name in BUILT_IN] == required


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="data source 'hf' is already registered"):
        register(SourceSpec("hf", HFSourceConfig, load_hf, required="path"))
    assert available_sources() == BUILT_IN and get_source("hf").config is HFSourceConfig


def test_unknown_source_is_one_line_naming_data_source_and_the_names() -> None:
    # Through the config file path, the message reads as before the registry (a Literal's).
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.source=csv"])
    assert str(info.value) == f"invalid config <defaults>: {UNKNOWN}"
    # Direct validation and a direct lookup name data.source too.
    with pytest.raises(ValidationError, match="data.source: must be one of 'synthetic', 'hf'"):
        DataConfig.model_validate({"source": "csv"})
    with pytest.raises(ConfigError) as lookup:
        get_source("csv")
    assert str(lookup.value) == UNKNOWN and "\n" not in UNKNOWN


def test_spec_checks_its_name_and_required_key() -> None:
    with pytest.raises(ValueError, match="not a valid identifier"):
        SourceSpec("my-source", ToyConfig, load_toy)
    with pytest.raises(ValueError, match="required key 'path' is not a field of ToyConfig"):
        SourceSpec("toy", ToyConfig, load_toy, required="path")
    with pytest.raises(ValueError, match=r"clash with data\.\* keys"):
        data_config_model([SourceSpec("partition", ToyConfig, load_toy)])


def test_a_registered_toy_source_loads_through_load_source(toy_registered: type[Section]) -> None:
    # Prepare
    config = toy_registered.model_validate(
        {"source": "toy", "toy": {"word": "ab", "rows": 20}, "global_test_fraction": 0.25}
    )
    # Execute
    loaded = load_source(config, seed=7)
    # Assert: its rows, with the global test set held out for it (it has no test data).
    assert (len(loaded.train), len(loaded.test)) == (15, 5)
    assert {r["multiple_choice_answer"] for r in loaded.train + loaded.test} == {"ab", "ba"}
    assert all(r["seed"] == 7 for r in loaded.train)
    data = build_federated_data(
        config.model_copy(
            update={"partition": config.partition.model_copy(update={"method": "iid", "min_samples": 2})}
        ),
        num_clients=2,
        seed=7,
    )
    assert sum(data.partition.sizes) == 15 and len(data.global_test) == 5


def test_a_registered_toy_source_has_its_required_key_checked(toy_registered: type[Section]) -> None:
    with pytest.raises(ValidationError, match="data.toy.word: required when data.source is 'toy'"):
        toy_registered.model_validate({"source": "toy"})
    # DataConfig was built before the toy source existed: it has no data.toy, so it refuses the name.
    with pytest.raises(ValidationError, match="data.source: must be one of 'synthetic', .* or 'medalpaca'"):
        DataConfig.model_validate({"source": "toy"})


def test_unregister_removes_the_source(toy_registered: type[Section]) -> None:
    assert available_sources() == [*BUILT_IN, "toy"]
    unregister("toy")
    assert available_sources() == BUILT_IN
    register(TOY)  # the fixture's cleanup unregisters it again
