"""Every registered strategy: config keys validate (errors name federation.strategy.<key>),
params are documented, and a 2-round federated job runs end to end on the tiny default."""

import math

import pytest
import torch

from fedumm.errors import ConfigError
from fedumm.runlog import read_checkpoint
from fedumm.strategies import STRATEGIES, FedAdam, build_strategy
from fedumm.validation import load_run_config

NEW = ["fedavgm", "fedadam", "fedyogi", "fedadagrad", "quality_weighted", "median", "trimmed_mean", "krum"]


def test_new_strategies_are_registered():
    assert set(NEW) <= set(STRATEGIES)
    assert all(STRATEGIES[name].name == name for name in STRATEGIES)


def test_fedadam_config_validates_and_builds():
    # Execute
    config = load_run_config(None, ["federation.strategy.name=fedadam", "federation.strategy.eta=0.01"])
    strategy = build_strategy(config.federation.strategy, num_clients=4)
    # Assert: eta set, the rest at their defaults
    assert isinstance(strategy, FedAdam)
    assert (strategy.params.eta, strategy.params.beta1, strategy.params.beta2, strategy.params.tau) == (
        0.01,
        0.9,
        0.99,
        1e-3,
    )
    assert strategy.params.variant == "paper" and strategy.params.bias_correction is False


@pytest.mark.parametrize(
    ("name", "setting", "key"),
    [
        ("fedadam", "eta=-1", "eta"),
        ("fedyogi", "beta2=1.0", "beta2"),
        ("fedadagrad", "beta2=0.9", "beta2"),  # FedAdagrad has no beta2: unknown key
        ("fedadam", "variant=flower", "variant"),
        ("fedadam", "bias_correction=true", None),  # valid with the paper variant
        ("fedavgm", "momentum=1.0", "momentum"),
        ("fedavgm", "server_lr=0", "server_lr"),
        ("quality_weighted", "epsilon=0", "epsilon"),
        ("trimmed_mean", "beta=0.5", "beta"),
        ("krum", "f=-1", "f"),
        ("krum", "m=0", "m"),
        ("median", "beta=0.1", "beta"),  # median takes no params
    ],
)
def test_bad_values_name_the_strategy_key(name, setting, key):
    overrides = [f"federation.strategy.name={name}", f"federation.strategy.{setting}"]
    if key is None:
        load_run_config(None, overrides)
        return
    with pytest.raises(ConfigError, match=rf"federation\.strategy\.{key}: "):
        load_run_config(None, overrides)


def test_openfedllm_variant_refuses_bias_correction():
    with pytest.raises(ConfigError, match=r"federation\.strategy\.bias_correction: the openfedllm variant"):
        load_run_config(
            None,
            [
                "federation.strategy.name=fedyogi",
                "federation.strategy.variant=openfedllm",
                "federation.strategy.bias_correction=true",
            ],
        )


@pytest.mark.parametrize("name", NEW)
def test_every_param_is_documented(name):
    for field, info in STRATEGIES[name].Params.model_fields.items():
        assert info.description, f"{name}.{field} has no description"


# Small params that fit 3 clients (Krum needs n > 2f + 2; multi-Krum m <= n - f).
EXTRA = {"krum": ["federation.strategy.f=0", "federation.strategy.m=2"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, cls in STRATEGIES.items() if "rounds" in cls.modes))
def test_two_rounds_end_to_end(name, tiny_llava_path, tmp_path):
    from fedumm.engines.simulation import simulate
    from fedumm.federation import ModelHost

    # Prepare
    config = load_run_config(
        None,
        [
            f"federation.strategy.name={name}",
            *EXTRA.get(name, []),
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "model.max_new_tokens=2",  # answers are one word; 8 decode steps would quadruple eval time
            "federation.num_clients=3",
            "federation.rounds=2",
            "data.synthetic.train_samples=90",
            "data.synthetic.test_samples=12",
            "data.partition.min_samples=4",
            "train.local_steps=2",
            "train.batch_size=4",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
        ],
    )
    host = ModelHost(config)
    initial = {k: v.clone() for k, v in host.initial_state.items()}
    # Execute
    result = simulate(config, host=host)
    # Assert
    records = result.federated.records
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records:
        assert math.isfinite(record["global"]["vqa_accuracy"])
        for metrics in record.get("client_metrics", {}).values():
            assert math.isfinite(metrics["local_vqa_accuracy"]) and math.isfinite(metrics["train_loss"])
    final = result.federated.final_state
    assert set(final) == set(initial)
    assert all(torch.isfinite(v).all() for v in final.values())
    if name == "flora":
        # FLoRA restarts the local LoRA every round (B = 0, the seeded A): what it learned is the
        # merged delta W it keeps as server state and adds to the base weights.
        merged = read_checkpoint(result.run_dir).server_state
        assert merged and any(bool(v.abs().sum() > 0) for v in merged.values()), "flora merged no update"
    else:
        assert any(not torch.equal(final[k], initial[k]) for k in initial), f"{name} never changed the global state"


# Params that let every strategy aggregate three clients (quality_weighted reads metric "q").
DTYPE_PARAMS = {"quality_weighted": {"metric": "q"}, "krum": {"f": 0}}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_result_keeps_the_global_states_dtype(name):
    from fedumm.strategies import ClientUpdate, validate_params

    # Prepare: a bfloat16 global state; decoded client payloads are float32.
    strategy = STRATEGIES[name](validate_params(name, DTYPE_PARAMS.get(name, {})), num_clients=3)
    global_state = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    strategy.server_extras(global_state, 1)
    updates = [
        ClientUpdate(i, 1, {"w": torch.tensor([1.0, 2.0]) + 0.5 * i}, {"q": 1.0}, {"w": torch.zeros(2)})
        for i in range(3)
    ]
    # Execute
    new = strategy.aggregate(global_state, updates, 1)
    # Assert
    assert new["w"].dtype == torch.bfloat16
    if name == "krum":
        # Every client has a neighbour at distance 0.5: the scores tie and Krum keeps client 0.
        assert torch.equal(new["w"], torch.tensor([1.0, 2.0], dtype=torch.bfloat16))
    elif not name.startswith("fed") or name in ("fedavg", "fedprox", "fedavgm"):
        # Mean, median, FedAvgM's first step and SCAFFOLD all give θ + 0.5 = [1.5, 2.5] here
        # (exact in bfloat16).
        assert torch.equal(new["w"], torch.tensor([1.5, 2.5], dtype=torch.bfloat16)), name
