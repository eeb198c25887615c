"""Simulated faults and attacks: hand-computed poisoned updates, flipped labels, and a run in
which a NaN attacker, dropouts and late stragglers are recorded while the model stays finite."""

from __future__ import annotations

import pytest
import torch

from fedumm.engines.simulation import simulate
from fedumm.errors import ConfigError
from fedumm.federation.faults import flip_labels, poison
from fedumm.runlog import read_checkpoint
from fedumm.validation import load_run_config

GLOBAL = {"w": torch.tensor([1.0, 2.0])}
TRAINED = {"w": torch.tensor([1.5, 1.0])}  # delta = [0.5, -1.0]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("scale", [1.0 + 10 * 0.5, 2.0 - 10 * 1.0]), ("sign_flip", [0.5, 3.0]), ("label_flip", [1.5, 1.0])],
)
def test_poisoned_updates_by_hand(kind, expected):
    config = load_run_config(
        None, [f"federation.attack.kind={kind}", "federation.attack.clients=[0]", "federation.attack.factor=10"]
    )
    assert torch.allclose(poison(kind, TRAINED, GLOBAL, config, seed=0)["w"], torch.tensor(expected))


def test_nan_and_gaussian_poison():
    config = load_run_config(
        None, ["federation.attack.kind=gaussian", "federation.attack.clients=[0]", "federation.attack.std=2.0"]
    )
    nan = poison("nan", TRAINED, GLOBAL, config, seed=0)["w"]
    assert torch.isnan(nan[0]) and nan[1] == 1.0 and not torch.isnan(TRAINED["w"]).any()  # input untouched
    noisy = torch.stack([poison("gaussian", {"w": torch.zeros(20_000)}, {}, config, seed=s)["w"] for s in (1, 2)])
    assert abs(noisy.std().item() - 2.0) < 0.05 and not torch.equal(noisy[0], noisy[1])


def test_flipped_labels_are_all_wrong_and_cyclic():
    rows = [{"multiple_choice_answer": a, "answers": [a, "b"]} for a in ("a", "b", "c")]
    flipped = flip_labels(rows)
    assert [r["multiple_choice_answer"] for r in flipped] == ["b", "c", "a"]
    assert flipped[0]["answers"] == ["b", "c"] and rows[0]["answers"] == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["federation.attack.kind=nan", "federation.attack.clients=[7]"], r"federation\.attack\.clients: \[7\]"),
        (["federation.attack.kind=nan"], r"federation\.attack\.clients: name the attacking client ids"),
        (["federation.faults.dropout=0.5", "engine.name=nvflare"], r"simulated in the in-process engine only"),
    ],
)
def test_attack_and_fault_settings_are_checked(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_run_config(None, overrides)


@pytest.mark.slow
def test_attacked_run_with_dropouts_and_stragglers_records_them_and_stays_finite(tmp_path, tiny_llava_path):
    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "federation.num_clients=4",
            "federation.rounds=3",
            "data.synthetic.train_samples=80",
            "data.synthetic.test_samples=16",
            "data.partition.min_samples=4",
            "train.local_steps=2",
            "train.batch_size=4",
            "eval.clients=false",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
            "federation.attack.kind=nan",
            "federation.attack.clients=[0]",
            "federation.attack.from_round=2",
            "federation.faults.dropout=0.3",
            "federation.faults.straggler_rate=0.3",
            "federation.round_timeout=10",
        ],
    )
    records = simulate(config).federated.records[1:]
    faults = [r.get("faults", {}) for r in records]
    # Round 1: no attack yet; from round 2 client 0's NaN reply is rejected whenever it reached the server.
    assert "attacked" not in faults[0] and "0" not in records[0].get("rejected", {})
    for record, fault in zip(records[1:], faults[1:], strict=True):
        assert ("0" in record.get("rejected", {})) == (0 in fault.get("attacked", []))
    dropped_or_late = {c for f in faults for c in f.get("dropped", []) + f.get("late", [])}
    assert dropped_or_late, "with 30% dropout and 30% late stragglers over 12 client-rounds some must miss"
    for record, fault in zip(records, faults, strict=True):
        assert sorted(record.get("missing", [])) == sorted(fault.get("dropped", []) + fault.get("late", []))
    state = read_checkpoint(tmp_path / config.name).global_state
    assert all(bool(torch.isfinite(t).all()) for t in state.values())


@pytest.mark.slow
def test_attacks_under_compression_are_encoded_with_the_codec_and_rejected(tmp_path, tiny_llava_path):
    # Prepare: int8 updates; client 0 sends NaN, client 1 a 1e6-scaled update, under an auto norm bound.
    common = [
        f"model.name_or_path={tiny_llava_path}",
        "model.device=cpu",
        "federation.num_clients=4",
        "federation.rounds=1",
        "data.synthetic.train_samples=80",
        "data.synthetic.test_samples=8",
        "data.partition.min_samples=4",
        "train.local_steps=2",
        "train.batch_size=4",
        "eval.clients=false",
        "eval.centralized_baseline=false",
        "output.progress=false",
        f"output.dir={tmp_path}",
        "federation.compression.codec=int8",
        "federation.validation.max_update_norm=auto",
    ]
    nan = load_run_config(None, [*common, "name=nan", "federation.attack.kind=nan", "federation.attack.clients=[0]"])
    scale = load_run_config(
        None, [*common, "name=scale", "federation.attack.kind=scale", "federation.attack.clients=[1]"]
    )
    # Execute
    nan_record = simulate(nan).federated.records[-1]
    scale_record = simulate(scale).federated.records[-1]
    # Assert: the NaN delta's int8 scales are NaN (refused before decoding the state); the scaled
    # delta decodes (its scales are 1e6 larger) and the norm bound catches it. The others aggregate.
    assert list(nan_record["rejected"]) == ["0"] and "a scale is not finite" in nan_record["rejected"]["0"]
    assert list(scale_record["rejected"]) == ["1"] and "above the bound" in scale_record["rejected"]["1"]
    assert set(nan_record["client_metrics"]) == {"1", "2", "3"} and set(scale_record["client_metrics"]) == {
        "0",
        "2",
        "3",
    }
