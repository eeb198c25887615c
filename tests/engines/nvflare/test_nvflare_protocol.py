"""The pieces controller and client agree on, checked without FLARE: payload packing, client
ids, per-site data configs, and the statistics the server rebuilds partition.json from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedumm import codec
from fedumm.config import load_config
from fedumm.data.federated import build_federated_data
from fedumm.engines.nvflare import protocol as P
from fedumm.engines.simulation import majority_baseline_accuracy
from fedumm.errors import ConfigError, FedummError


def test_payload_round_trips_through_a_uint8_array_unchanged():
    message = codec.encode_message({"state": {"a.lora_A.weight": torch.randn(4, 3)}, "extras": {}})
    array = P.pack(message)
    assert array.dtype == np.uint8 and array.nbytes == len(message)
    assert P.unpack({P.PAYLOAD_KEY: array}) == message
    assert P.unpack({P.PAYLOAD_KEY: message}) == message


def test_unpack_rejects_other_params():
    with pytest.raises(FedummError, match="no 'fedumm' payload"):
        P.unpack({"weights": np.zeros(3)})
    with pytest.raises(FedummError, match="1-D uint8"):
        P.unpack({P.PAYLOAD_KEY: np.zeros(3, dtype=np.float32)})


def test_client_ids_follow_natural_site_order():
    names = ["site-10", "site-2", "site-1", "hospital-b", "hospital-a"]
    assert P.client_ids(names) == {"hospital-a": 0, "hospital-b": 1, "site-1": 2, "site-2": 3, "site-10": 4}
    assert P.client_ids([f"site-{i}" for i in range(1, 4)]) == {"site-1": 0, "site-2": 1, "site-3": 2}


def test_server_rebuilds_partition_and_majority_from_client_counts():
    config = load_config(None, ["federation.num_clients=3", "data.synthetic.train_samples=90",
                                "data.synthetic.test_samples=20", "data.partition.min_samples=4"])
    data = build_federated_data(config.data, 3, config.seed)
    stats = [P.data_stats(c.train, c.test, config.data) for c in data.clients]
    assert P.partition_from_stats(stats).to_dict() == data.partition.to_dict()
    assert P.majority_from_stats(stats, data.global_test) == majority_baseline_accuracy(
        data.pooled_train, data.global_test)


def test_server_reports_sites_skipped_rows_and_modalities():
    # Prepare: two sites' counts, one with a text-only row and broken rows skipped in two files.
    both = {"multiple_choice_answer": "yes", "answer_type": "yes/no", "image": object(), "question": "q?"}
    text_only = dict(both, image=None)
    config = load_config(None, [])
    stats = [P.data_stats([both, both], [text_only], config.data, {"a.json": 2, "b.json": 1}),
             P.data_stats([both], [], config.data, {})]
    # Execute
    by_site = P.partition_from_stats(stats, ["site-1", "site-2"])
    shared = P.partition_from_stats([stats[0], stats[0]])  # partition placement: same skips everywhere
    # Assert
    assert by_site.skipped_summary() == {"skipped_rows": 3,
                                         "skipped_rows_by_file": {"site-1: a.json": 2, "site-1: b.json": 1}}
    assert shared.skipped_summary() == {"skipped_rows": 3, "skipped_rows_by_file": {"a.json": 2, "b.json": 1}}
    assert by_site.to_dict()["modality_counts"][0]["text"] == 1
    assert by_site.to_dict()["modality_counts"][1]["text"] == 0


def test_site_config_precedence(tmp_path):
    config = load_config(None, ["engine.name=nvflare", "federation.num_clients=1",
                                "engine.sites={site-1: {seed: 5, data: {synthetic: {train_samples: 11}}}}"])
    # 1. the job's entry
    site, source = P.load_site_config("site-1", tmp_path, config, {})
    assert source == "engine.sites.site-1" and site.seed == 5 and site.data.synthetic.train_samples == 11
    # 2. the site's own file beats the job
    local = tmp_path / P.SITE_CONFIG_FILE
    local.parent.mkdir(parents=True)
    local.write_text("seed: 7\ndata:\n  synthetic:\n    train_samples: 13\n")
    site, source = P.load_site_config("site-1", tmp_path, config, {})
    assert source == str(local) and site.seed == 7 and site.data.synthetic.train_samples == 13
    # 3. the environment variable beats both
    env_file = tmp_path / "other.yaml"
    env_file.write_text("data:\n  synthetic:\n    train_samples: 17\n")
    site, source = P.load_site_config("site-1", tmp_path, config, {P.SITE_CONFIG_ENV: str(env_file)})
    assert source == str(env_file) and site.seed is None and site.data.synthetic.train_samples == 17


def test_site_without_data_config_says_where_to_put_it(tmp_path):
    config = load_config(None, ["engine.name=nvflare"])
    with pytest.raises(ConfigError, match=r"site site-9: no data config; write .*local/fedumm_site.yaml.*"
                                          r"engine.sites.site-9"):
        P.load_site_config("site-9", tmp_path, config, {})


def test_bad_site_file_names_the_file_and_key(tmp_path):
    config = load_config(None, ["engine.name=nvflare"])
    bad = tmp_path / "site.yaml"
    bad.write_text("data:\n  partition:\n    alpha: -1\n")
    with pytest.raises(ConfigError, match=r"site config .*site.yaml: data.partition.alpha"):
        P.load_site_config("site-1", tmp_path, config, {P.SITE_CONFIG_ENV: str(bad)})
    with pytest.raises(ConfigError, match="FEDUMM_SITE_CONFIG: site config file .* not found"):
        P.load_site_config("site-1", tmp_path, config, {P.SITE_CONFIG_ENV: str(tmp_path / "nope.yaml")})


def test_site_rows_come_from_the_sites_own_source():
    config = load_config(None, ["engine.name=nvflare", "federation.num_clients=1",
                                "engine.sites={site-1: {seed: 3, data: {synthetic: {train_samples: 12, test_samples: 5}}}}"])
    train, test, skipped = P.load_site_rows(config.engine.sites["site-1"], config.seed)
    assert (len(train), len(test), skipped) == (12, 5, {})
    again, _, _ = P.load_site_rows(config.engine.sites["site-1"], seed=999)  # the site's seed wins
    assert [r["question_id"] for r in again] == [r["question_id"] for r in train]
