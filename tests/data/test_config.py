"""Tests for the data config sections (fedumm.data.config) through load_config: the keys' errors name them."""

from __future__ import annotations

import pytest

from fedumm.config import load_config
from fedumm.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["data.source=hf"], "data.hf.path: required when data.source is 'hf'"),
        (["data.source=client_files"], "data.client_files.root: required"),
        (["data.source=table"], "data.table.path: required"),
        (["data.source=llava_json"], "data.llava_json.path: required"),
        (["data.source=csv"], "data.source: must be one of"),
        (["data.partition.method=natural"], "data.partition.column: required when data.partition.method is 'natural'"),
        (["data.partition.method=quantity_skew", "data.partition.alpha=0"], "data.partition.alpha: must be > 0"),
        (["data.partition.shards_per_client=0"], "data.partition.shards_per_client"),
        (["data.modality.scenario=drop"], "data.modality.scenario: must be one of"),
        (["data.modality.rate=1.5"], "data.modality.rate"),
        (["data.table.on_error=ignore"], "data.table.on_error: must be one of"),
        (["data.global_test_fraction=0"], "data.global_test_fraction"),
    ],
)
def test_new_config_keys_fail_naming_the_key(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)


def test_new_config_keys_parse() -> None:
    config = load_config(
        None,
        [
            "data.source=table",
            "data.table.path=t.jsonl",
            "data.table.on_error=skip",
            "data.partition.method=shards",
            "data.partition.shards_per_client=3",
            "data.modality.scenario=missing",
            "data.modality.rate=0.3",
            "data.hf.data_files={train: [a.parquet], validation: [b.parquet]}",
        ],
    )
    assert (config.data.table.path, config.data.table.on_error) == ("t.jsonl", "skip")
    assert (config.data.partition.method, config.data.partition.shards_per_client) == ("shards", 3)
    assert (config.data.modality.scenario, config.data.modality.rate) == ("missing", 0.3)
    assert config.data.hf.data_files == {"train": ["a.parquet"], "validation": ["b.parquet"]}
