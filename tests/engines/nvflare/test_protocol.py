"""The pieces controller and client agree on, checked without FLARE's runtime: payload packing,
client ids, per-site data configs, the setup replies the controller accepts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedumm import codec
from fedumm.engines.nvflare import protocol as P
from fedumm.errors import ConfigError, DataError, FedummError
from fedumm.federation.setup import data_stats
from fedumm.validation import load_run_config


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


def test_site_config_precedence(tmp_path):
    config = load_run_config(
        None,
        [
            "engine.name=nvflare",
            "federation.num_clients=1",
            "engine.sites={site-1: {seed: 5, data: {synthetic: {train_samples: 11}}}}",
        ],
    )
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
    config = load_run_config(None, ["engine.name=nvflare"])
    with pytest.raises(
        ConfigError,
        match=r"site site-9: no data config; write .*local/fedumm_site.yaml.*"
        r"engine.sites.site-9",
    ):
        P.load_site_config("site-9", tmp_path, config, {})


def test_bad_site_file_names_the_file_and_key(tmp_path):
    config = load_run_config(None, ["engine.name=nvflare"])
    bad = tmp_path / "site.yaml"
    bad.write_text("data:\n  partition:\n    alpha: -1\n")
    with pytest.raises(ConfigError, match=r"site config .*site.yaml: data.partition.alpha"):
        P.load_site_config("site-1", tmp_path, config, {P.SITE_CONFIG_ENV: str(bad)})
    with pytest.raises(ConfigError, match="FEDUMM_SITE_CONFIG: site config file .* not found"):
        P.load_site_config("site-1", tmp_path, config, {P.SITE_CONFIG_ENV: str(tmp_path / "nope.yaml")})


def test_site_rows_come_from_the_sites_own_source():
    config = load_run_config(
        None,
        [
            "engine.name=nvflare",
            "federation.num_clients=1",
            "engine.sites={site-1: {seed: 3, data: {synthetic: {train_samples: 12, test_samples: 5}}}}",
        ],
    )
    train, test, skipped = P.load_site_rows(config.engine.sites["site-1"], config.seed)
    assert (len(train), len(test), skipped) == (12, 5, {})
    again, _, _ = P.load_site_rows(config.engine.sites["site-1"], seed=999)  # the site's seed wins
    assert [r["question_id"] for r in again] == [r["question_id"] for r in train]


class _Controller:
    """What FlareTransport asks of the FLARE controller, with the sites' setup replies canned."""

    data_placement = "site"
    task_timeout = 60

    def __init__(self, replies: dict):
        self.replies = replies
        self.engine = SimpleNamespace(get_clients=lambda: [SimpleNamespace(name=n) for n in replies])

    def info(self, message: str) -> None:
        pass

    def _task_data(self, meta, *args):
        return meta

    def _send_async(self, task, targets, data):
        assert task == P.SETUP_TASK
        return lambda: [SimpleNamespace(meta={"client_name": n, P.META_STATS: self.replies[n]}) for n in targets]


def _rows(answers):
    return [{"multiple_choice_answer": a, "answer_type": "other", "image": object(), "question": "q?"} for a in answers]


def test_flare_setup_checks_replies_and_names_no_rare_label():
    pytest.importorskip("nvflare")
    from fedumm.engines.nvflare.controller import FlareTransport  # noqa: PLC0415 (needs nvflare)

    config = load_run_config(None, ["engine.name=nvflare", "federation.num_clients=2", "engine.min_label_count=3"])
    replies = {
        "site-1": data_stats(_rows(["yes"] * 4 + ["Jane Doe"]), [], config.data, min_label_count=3),
        "site-2": data_stats(_rows(["no"] * 3), _rows(["John Roe"]), config.data, min_label_count=3),
    }
    setup = FlareTransport(_Controller(replies), config).setup()
    saved = setup.partition.to_dict()
    assert saved["label_counts"] == [{"no": 0, "yes": 4}, {"no": 3, "yes": 0}]
    assert saved["other_label_counts"] == [1, 1] and saved["min_label_count"] == 3
    assert "Doe" not in json.dumps(saved) and "Roe" not in json.dumps(saved)
    assert setup.answer_counts == {"yes": 4, "no": 3} and setup.train_rows == 8
    # A site that sends a rare label's text (e.g. an older client) is refused before anything is written.
    replies["site-2"] = {**replies["site-2"], "label_counts": [["no", 3], ["John Roe", 1]], "other_label_count": 0}
    with pytest.raises(DataError, match="^site site-2: setup reply field 'label_counts': .*min_label_count 3$"):
        FlareTransport(_Controller(replies), config).setup()
    # The job's k must be at least 1.
    with pytest.raises(ConfigError, match="engine.min_label_count"):
        load_run_config(None, ["engine.name=nvflare", "engine.min_label_count=0"])
