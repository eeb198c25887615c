"""federation.mode: one_shot through THE round loop: one round, the combiner's global adapter,
and the server-side references (the clients' prediction ensemble, each client's own model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedumm.federation.one_shot import candidates_per_row
from fedumm.strategies import STRATEGIES
from fedumm.validation import load_run_config

ONE_SHOT = sorted(n for n, cls in STRATEGIES.items() if "one_shot" in cls.modes)


def test_candidates_are_the_distinct_normalised_answers_per_row():
    # three clients' answers for two rows; "Red" and "red" are one answer (first spelling kept)
    predictions = [["Red", "2"], ["red", "two"], ["blue", "2"]]
    assert candidates_per_row(predictions) == [["Red", "blue"], ["2"]]


def _tiny(tmp_path, model_path, *extra):
    return load_run_config(
        None,
        [
            f"model.name_or_path={model_path}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            "federation.mode=one_shot",
            "federation.num_clients=3",
            "data.synthetic.train_samples=90",
            "data.synthetic.test_samples=12",
            "data.partition.min_samples=4",
            "train.local_epochs=2",
            "train.batch_size=8",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
            *extra,
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ONE_SHOT)
def test_one_shot_end_to_end(name, tiny_llava_path, tmp_path):
    from fedumm.engines.simulation import simulate
    from fedumm.federation import ModelHost

    # Prepare
    config = _tiny(tmp_path, tiny_llava_path, f"federation.strategy.name={name}")
    host = ModelHost(config)
    initial = {k: v.clone() for k, v in host.initial_state.items()}
    # Execute
    result = simulate(config, host=host)
    # Assert: round 0 and the one round; every client trained its whole budget (2 epochs) once
    records = result.federated.records
    assert [r["round"] for r in records] == [0, 1]
    last = records[1]
    assert sorted(last["client_metrics"]) == ["0", "1", "2"]
    for metrics in last["client_metrics"].values():
        assert metrics["steps"] == 2 * math.ceil(metrics["num_samples"] / 8)
    # bytes are counted as for multi-round runs: every upload plus one download per client
    payload = last["bytes"]
    assert payload["total"] == sum(payload["upload"].values()) + 3 * payload["download"]["0"]
    # the references: the ensemble's metric and each client's own upload on the global test
    refs = last["one_shot"]
    floor = refs["local_floor"]
    assert refs["metric"] == "vqa_accuracy" and refs["ensemble"]["n"] == 12
    assert sorted(floor["clients"]) == ["0", "1", "2"]
    values = list(floor["clients"].values())
    assert floor["min"] == min(values) and floor["max"] == max(values)
    assert floor["mean"] == pytest.approx(sum(values) / 3)
    assert all(0.0 <= v <= 1.0 for v in [*values, refs["ensemble"]["vqa_accuracy"]])
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert summary["mode"] == "one_shot" and summary["rounds"] == 1
    assert summary["one_shot"] == {
        "ensemble": refs["ensemble"]["vqa_accuracy"],
        "local_floor": {k: floor[k] for k in ("mean", "min", "max")},
    }
    assert "one-shot ensemble of the clients:" in (tmp_path / "quickstart" / "summary.txt").read_text()
    final = result.federated.final_state
    assert any(not torch.equal(final[k], initial[k]) for k in initial), f"{name} never changed the global state"
    assert all(torch.isfinite(v).all() for v in final.values())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vqa", "classification"])
def test_ensemble_of_identical_uploads_is_that_model(task, tiny_llava_path, tmp_path):
    """K copies of one adapter: the ensemble answers (vqa) or scores (classification) exactly as
    that adapter does, and its local floor is the adapter's own metric."""
    from fedumm.data.synthetic import make_synthetic_vqa
    from fedumm.federation import ModelHost
    from fedumm.federation.one_shot import one_shot_references
    from fedumm.strategies import ClientUpdate

    # Prepare: a trained adapter (a few steps towards the rows' answers)
    config = _tiny(tmp_path, tiny_llava_path, f"eval.task={task}", "eval.positive_label='yes'", "train.local_steps=4")
    host = ModelHost(config)
    rows = make_synthetic_vqa(160, seed=5)
    if task == "classification":
        rows = [r for r in rows if r["answer_type"] == "yes/no"]
    host.train(rows[:16], config.train, seed=0, hooks=None, progress=False, description="a few steps")
    state, test = host.get_state(), rows[16:28]
    expected = host.evaluate(test, batch_size=8)
    # Execute
    refs = one_shot_references(host, state, [ClientUpdate(i, 5, state) for i in range(3)], test, config)
    # Assert
    metric = refs["metric"]
    assert refs["local_floor"]["min"] == refs["local_floor"]["max"] == pytest.approx(expected[metric])
    if task == "vqa":
        assert refs["ensemble"][metric] == pytest.approx(expected[metric])
    else:
        assert refs["ensemble"]["roc_auc"] == pytest.approx(expected["roc_auc"])
    # the host holds the global state again
    assert all(torch.equal(v, state[k]) for k, v in host.get_state().items())


@pytest.mark.slow
def test_a_one_shot_round_without_an_aggregate_ends_the_run(tiny_llava_path, tmp_path):
    from fedumm.engines.simulation import simulate
    from fedumm.errors import AggregationError

    # every client's reply claims more rows than it has: all rejected, no aggregate
    config = _tiny(tmp_path, tiny_llava_path, "federation.strategy.name=mean", "federation.validation.max_samples=1")
    with pytest.raises(AggregationError, match=r"the one-shot round has no aggregate .*client 0 rejected"):
        simulate(config)
