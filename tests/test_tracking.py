import json
import sys

import pytest

from fedumm.config import load_config
from fedumm.errors import ConfigError
from fedumm.tracking import MLFLOW_RUN_ID_FILE, MlflowTracker, flat_params, round_scalars

RECORD = {
    "phase": "federated",
    "round": 3,
    "clients": [0, 2],
    "global": {
        "task": "vqa",
        "n": 8,
        "vqa_accuracy": 0.5,
        "by_answer_type": {"yes/no": {"n": 4, "vqa_accuracy": 0.75}},
    },
    "client_metrics": {"0": {"num_samples": 10, "train_loss": 1.5, "local_vqa_accuracy": 0.25}},
    "bytes": {"upload": {"0": 100, "2": 50}, "download": {"0": 300, "2": 300}, "total": 750},
    "seconds": {"fit": 1.0, "eval": 0.5, "round": 1.5},
    "rejected": {"2": "non-finite"},
    "missing": [],
    "privacy": {"epsilon": 2.25, "delta": 1e-5},
}


def test_a_record_becomes_phase_keyed_scalars():
    scalars = round_scalars(RECORD)
    assert scalars == {
        "federated/global/n": 8.0,
        "federated/global/vqa_accuracy": 0.5,
        "federated/global/by_answer_type/yes/no/n": 4.0,
        "federated/global/by_answer_type/yes/no/vqa_accuracy": 0.75,
        "federated/client/0/num_samples": 10.0,
        "federated/client/0/train_loss": 1.5,
        "federated/client/0/local_vqa_accuracy": 0.25,
        "federated/bytes/upload": 150.0,
        "federated/bytes/download": 600.0,
        "federated/bytes/total": 750.0,
        "federated/seconds/fit": 1.0,
        "federated/seconds/eval": 0.5,
        "federated/seconds/round": 1.5,
        "federated/rejected": 1.0,
        "federated/missing": 0.0,
        "federated/privacy/epsilon": 2.25,
    }
    # Round 0 records only the global metrics; non-finite values are not scalars.
    assert round_scalars({"phase": "centralized", "round": 0, "global": {"accuracy": float("nan"), "auc": 0.5}}) == {
        "centralized/global/auc": 0.5
    }


def test_the_config_flattens_to_string_params():
    params = flat_params({"seed": 42, "federation": {"rounds": 2, "strategy": {"name": "fedavg"}}, "x": None, "l": [1]})
    assert params == {
        "seed": "42",
        "federation.rounds": "2",
        "federation.strategy.name": "fedavg",
        "x": "null",
        "l": "[1]",
    }


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("[tensorboard, tensorboard]", "lists a tracker twice"), ("[wandb]", "must be one of")],
)
def test_bad_tracker_lists_name_the_key(value, fragment):
    with pytest.raises(ConfigError, match="output.trackers") as info:
        load_config(None, [f"output.trackers={value}"])
    assert fragment in str(info.value)


def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(
        ConfigError, match=r"output.trackers: mlflow needs the mlflow package: pip install 'fedumm\[tracking\]'"
    ):
        MlflowTracker(load_config(None, []), tmp_path)


def _tiny_run(tmp_path, *extra):
    from fedumm.cli import main

    args = [
        "output.dir=" + str(tmp_path),
        "name=tracked",
        "model.device=cpu",
        "federation.num_clients=2",
        "federation.rounds=2",
        "data.synthetic.train_samples=40",
        "data.synthetic.test_samples=8",
        "data.partition.min_samples=4",
        "train.batch_size=4",
        "train.local_steps=1",
        "eval.centralized_baseline=false",
        "output.progress=false",
        "output.trackers=[tensorboard, mlflow]",
        *extra,
    ]
    assert main(["run", *(a for o in args for a in ("--set", o))]) == 0
    return tmp_path / "tracked"


@pytest.mark.slow
def test_both_trackers_hold_one_point_per_round_read_back_with_their_own_readers(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = _tiny_run(tmp_path)
    expected = [
        (r["round"], r["global"]["vqa_accuracy"])
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ]
    assert [rnd for rnd, _ in expected] == [0, 1, 2]

    # TensorBoard: the event file in <run>/tensorboard.
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("federated/global/vqa_accuracy")]
    assert [s for s, _ in points] == [0, 1, 2]
    assert [v for _, v in points] == pytest.approx([v for _, v in expected], abs=1e-6)
    assert len(events.Scalars("federated/bytes/total")) == 2  # rounds 1 and 2 moved bytes

    # MLflow: the file store in <run>/mlruns, the run whose id the run folder keeps.
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "federated/global/vqa_accuracy"))
    assert [s for s, _ in history] == [0, 1, 2]
    assert [v for _, v in history] == pytest.approx([v for _, v in expected])
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.data.params["federation.rounds"] == "2"
    assert mlflow_run.data.params["output.trackers"] == "[tensorboard, mlflow]"
    assert mlflow_run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "report.html", "adapter"} <= artifacts


@pytest.mark.slow
def test_mlflow_follows_the_tracking_uri_of_the_environment(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "central-store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    run = _tiny_run(tmp_path, "output.trackers=[mlflow]")
    assert not (run / "mlruns").exists()
    client = MlflowClient(tracking_uri=store.as_uri())
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    assert len(client.get_metric_history(run_id, "federated/global/vqa_accuracy")) == 3


def test_a_round_without_evaluation_logs_its_time_split_and_no_global_metric():
    record = {
        "phase": "federated",
        "round": 3,
        "evaluated": False,
        "clients": [0],
        "seconds": {"train": 1.0, "client_eval": 0.25, "global_eval": 0.0, "round": 1.5},
    }
    assert round_scalars(record) == {
        "federated/seconds/train": 1.0,
        "federated/seconds/client_eval": 0.25,
        "federated/seconds/global_eval": 0.0,
        "federated/seconds/round": 1.5,
        "federated/rejected": 0.0,
        "federated/missing": 0.0,
    }
