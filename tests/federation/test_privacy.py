"""Client-level DP and secure aggregation in the round loop: sampling, clipping, the noisy
mean, the budget, the refusals, and whole runs in the in-process engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedumm.engines.simulation import simulate
from fedumm.errors import ConfigError
from fedumm.federation import Server
from fedumm.federation.privacy import CLIP_KEY, UNCLIPPED_METRIC, ClientPrivacy, plan_privacy, poisson_sample
from fedumm.privacy.accountant import calibrate_noise, epsilon
from fedumm.runlog import read_checkpoint
from fedumm.strategies import ClientUpdate
from fedumm.validation import load_run_config


def _config(*overrides, tmp_path="runs"):
    return load_run_config(None, ["federation.num_clients=4", f"output.dir={tmp_path}", *overrides])


DP = ["privacy.level=client", "privacy.noise_multiplier=0", "privacy.clip_norm=1.0"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([*DP, "federation.strategy.name=median"], "median: not with privacy.level=client: a robust aggregator"),
        ([*DP, "federation.strategy.name=krum"], "krum: not with privacy.level=client"),
        ([*DP, "federation.strategy.name=quality_weighted"], "self-reported score"),
        ([*DP, "federation.strategy.name=scaffold"], "control-variate delta travels"),
        (["privacy.secure_aggregation={threshold: 2}", "federation.strategy.name=trimmed_mean"], "secure_aggregation"),
        (["privacy.secure_aggregation={threshold: 2}", "federation.validation.max_update_norm=1"], "never sees"),
        (["privacy.secure_aggregation={threshold: 5}"], "threshold (5) exceeds the clients per round (4"),
        (
            [
                "privacy.level=client",
                "privacy.noise_multiplier=1",
                "privacy.mechanism=local",
                "privacy.clip_norm=adaptive",
            ],
            "without noise",
        ),
        (
            ["privacy.level=client", "privacy.noise_multiplier=1", "privacy.clip_norm=adaptive"],
            "privacy.clipped_count_stddev (0.2) must exceed noise_multiplier / 2 (0.5)",
        ),
        (["privacy.level=client"], "give privacy.noise_multiplier or privacy.target_epsilon"),
        (["privacy.level=client", "privacy.noise_multiplier=1", "privacy.target_epsilon=3"], "not both"),
        (["privacy.level=client", "privacy.noise_multiplier=1", "privacy.clip_norm=0"], "must be positive"),
        (["privacy.level=client", "privacy.target_epsilon=5", "privacy.max_epsilon=2"], "exceeds privacy.max_epsilon"),
        (["privacy.level=sample", "privacy.noise_multiplier=1", "privacy.clip_norm=adaptive"], "client level only"),
    ],
)
def test_combinations_that_void_the_guarantee_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        _config(*overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_the_mean_based_strategies_are_accepted(name):
    assert _config(*DP, f"federation.strategy.name={name}").privacy.level == "client"


def test_poisson_sampling_draws_each_client_at_the_rate():
    # 40 clients at q = 0.25 over 500 rounds: 10 per round on average, and every client ~125 times.
    counts = np.zeros(40)
    sizes = []
    for round_num in range(500):
        chosen = poisson_sample(list(range(40)), 0.25, round_num)
        counts[chosen] += 1
        sizes.append(len(chosen))
    assert np.mean(sizes) == pytest.approx(10, abs=0.4)
    assert np.var(sizes) == pytest.approx(40 * 0.25 * 0.75, rel=0.2)  # binomial, not a fixed size
    assert counts.min() > 90 and counts.max() < 160


def test_target_epsilon_picks_the_noise_multiplier_for_the_planned_rounds():
    config = _config(
        "privacy.level=client", "privacy.target_epsilon=3", "federation.fraction_fit=0.5", "federation.rounds=6"
    )
    plan = plan_privacy(config)
    assert plan.noise_multiplier == pytest.approx(calibrate_noise("rdp", 0.5, 3.0, 1e-5, 6))
    assert epsilon("rdp", 0.5, plan.noise_multiplier, 6, 1e-5) == pytest.approx(3.0, rel=0.01)
    assert plan.expected == pytest.approx(2.0)


def _server(*overrides):
    config = _config(*overrides)
    initial = {"w": torch.zeros(2)}
    return Server.from_config(config, initial, 4)


def test_the_server_aggregates_clipped_updates_over_the_expected_participants():
    # Prepare: C = 1, z = 0, q = 1 of 4 clients; updates (3, 4) (norm 5) and (0.3, 0.4) (norm 0.5).
    server = _server(*DP)
    updates = [
        ClientUpdate(0, 10, {"w": torch.tensor([3.0, 4.0])}),
        ClientUpdate(1, 1, {"w": torch.tensor([0.3, 0.4])}),
    ]
    # Execute
    assert server.aggregate_updates(updates, 1)
    # Assert: ((0.6, 0.8) + (0.3, 0.4)) / 4, not sample-weighted: the first client's claim does not count.
    assert torch.allclose(server.global_state["w"], torch.tensor([0.225, 0.3]))
    record = server.privacy.record()
    assert record["participants"] == 2 and record["clip_norm"] == 1.0


def test_fedavgm_takes_the_noisy_mean_as_its_pseudo_gradient():
    # momentum 0.5, server lr 1: round 1 moves by the mean, round 2 by mean + 0.5 mean.
    server = _server(*DP, "federation.strategy.name=fedavgm", "federation.strategy.momentum=0.5")
    for round_num in (1, 2):
        update = ClientUpdate(0, 1, {"w": server.global_state["w"] + torch.tensor([0.4, 0.0])})
        assert server.aggregate_updates([update], round_num)
    assert float(server.global_state["w"][0]) == pytest.approx(0.1 + 0.15)


def test_central_noise_on_the_aggregate_has_std_z_c_over_expected():
    server = _server(
        "privacy.level=client", "privacy.noise_multiplier=2", "privacy.clip_norm=0.5", "privacy.seeded_noise=true"
    )
    server.global_state = {"w": torch.zeros(20_000)}
    update = ClientUpdate(0, 1, {"w": torch.zeros(20_000)})
    assert server.aggregate_updates([update], 1)
    assert float(server.global_state["w"].std()) == pytest.approx(2 * 0.5 / 4, rel=0.03)


def test_seeded_noise_repeats_and_os_noise_does_not():
    def run(seeded):
        server = _server("privacy.level=client", "privacy.noise_multiplier=1", f"privacy.seeded_noise={seeded}")
        server.aggregate_updates([ClientUpdate(0, 1, {"w": torch.zeros(2)})], 1)
        return server.global_state["w"]

    assert torch.equal(run("true"), run("true"))
    assert not torch.equal(run("false"), run("false"))


def test_a_client_clips_reports_its_bit_and_adds_local_noise():
    config = _config(
        "privacy.level=client", "privacy.noise_multiplier=3", "privacy.mechanism=local", "privacy.seeded_noise=true"
    )
    client = ClientPrivacy(plan_privacy(config), 0, 2)
    global_state = {"w": torch.zeros(40_000)}
    trained = {"w": torch.full((40_000,), 0.01)}  # norm 2 > C = 0.5
    # Execute
    delta, metrics = client.privatize(global_state, trained, {CLIP_KEY: torch.tensor([0.5])}, 1)
    # Assert: clipped to 0.5 (0.0025 per coordinate), then N(0, (3 * 0.5)^2) per coordinate.
    assert metrics == {UNCLIPPED_METRIC: 0.0}
    assert float(delta["w"].mean()) == pytest.approx(0.0025, abs=0.02)
    assert float(delta["w"].std()) == pytest.approx(1.5, rel=0.02)


def test_the_privacy_state_survives_a_checkpoint():
    adaptive = [
        "privacy.level=client",
        "privacy.noise_multiplier=1",
        "privacy.clip_norm=adaptive",
        "privacy.clipped_count_stddev=2",
    ]
    server = _server(*adaptive)
    server.privacy.clip_norm = 0.37
    server.privacy.spend()
    state = server.state_dict()
    other = _server(*adaptive)
    other.privacy.load_state_dict(state)
    assert other.privacy.clip_norm == pytest.approx(0.37) and other.privacy.accountant.rounds == 1
    with pytest.raises(ValueError, match="no privacy state"):
        other.privacy.load_state_dict({})


# ---------------------------------------------------------------------------- whole runs


def _tiny(model_path, out, name, *extra):
    return load_run_config(
        None,
        [
            f"name={name}",
            f"model.name_or_path={model_path}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            "federation.num_clients=4",
            "federation.rounds=2",
            "data.synthetic.train_samples=80",
            "data.synthetic.test_samples=8",
            "data.partition.min_samples=4",
            "train.batch_size=4",
            "train.local_steps=2",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={out}",
            *extra,
        ],
    )


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_secure_fedavg_equals_plain_fedavg_within_the_fixed_point_step(tmp_path, tiny_llava_path):
    from fedumm.federation import ModelHost

    # One round: later rounds train from slightly different globals, which AdamW amplifies.
    plain = _tiny(tiny_llava_path, tmp_path, "plain", "federation.rounds=1")
    secure = _tiny(
        tiny_llava_path, tmp_path, "secure", "federation.rounds=1", "privacy.secure_aggregation={threshold: 3}"
    )
    host = ModelHost(plain)
    a, b = simulate(plain, host=host), simulate(secure, host=host)
    state_a = read_checkpoint(a.run_dir).global_state
    state_b = read_checkpoint(b.run_dir).global_state
    step = 2 * 8.0 / (2**24 - 1)
    worst = max(float((state_a[k] - state_b[k]).abs().max()) for k in state_a)
    assert 0 < worst < 4 * step  # 4 clients' rounding
    record = _records(b.run_dir)[1]
    assert record["secure_aggregation"]["survivors"] == 4
    assert set(record["secure_aggregation"]["bytes_up"]) == {"advertise_keys", "share_keys", "masked_input", "unmask"}
    assert all(
        set(m) <= {"num_samples", "steps", "train_seconds", "eval_seconds", "serialise_seconds"}
        for m in record["client_metrics"].values()
    )
    assert b.summary["secure_aggregation"] is True


@pytest.mark.slow
def test_a_dp_run_reports_epsilon_each_round_and_stops_before_the_budget(tmp_path, tiny_llava_path):
    config = _tiny(
        tiny_llava_path,
        tmp_path,
        "dp",
        "federation.rounds=6",
        "federation.fraction_fit=0.5",
        "privacy.level=client",
        "privacy.noise_multiplier=1.0",
        "privacy.clip_norm=adaptive",
        "privacy.clipped_count_stddev=2",
        "privacy.max_epsilon=4",
        "privacy.seeded_noise=true",
    )
    result = simulate(config)
    records = _records(result.run_dir)
    spent = [r["privacy"]["epsilon"] for r in records[1:]]
    # Assert: epsilon after r rounds is the library's, each round; the round that would pass 4 never ran.
    assert spent == pytest.approx([epsilon("rdp", 0.5, 1.0, r, 1e-5) for r in range(1, len(spent) + 1)])
    assert spent[-1] <= 4 < epsilon("rdp", 0.5, 1.0, len(spent) + 1, 1e-5)
    assert len(spent) < 6
    privacy = result.summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(spent[-1]) and privacy["rounds"] == len(spent)
    assert privacy["stopped"].startswith("privacy.max_epsilon=4")
    assert {"epsilon", "delta", "noise_multiplier", "sample_rate", "rounds", "accountant", "mechanism"} <= set(privacy)
    assert [r["privacy"]["clip_norm"] for r in records[1:]] != [0.1] * len(spent)  # the bound adapts


@pytest.mark.slow
def test_distributed_dp_under_secure_aggregation_runs(tmp_path, tiny_llava_path):
    config = _tiny(
        tiny_llava_path,
        tmp_path,
        "ddp",
        "privacy.level=client",
        "privacy.noise_multiplier=0.5",
        "privacy.clip_norm=0.5",
        "privacy.secure_aggregation={threshold: 2}",
        "federation.fraction_fit=1.0",
    )
    result = simulate(config)
    assert result.summary["privacy"]["mechanism"] == "central+secure_aggregation"
    assert result.summary["privacy"]["epsilon"] == pytest.approx(epsilon("rdp", 1.0, 0.5, 2, 1e-5))
    for record in _records(result.run_dir)[1:]:
        if record.get("aggregated", True):
            answered = len(record["clients"]) - len(record.get("faults", {}).get("dropped", []))
            assert record["secure_aggregation"]["survivors"] == answered >= 2
