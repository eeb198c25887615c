"""End to end: a 2-client x 2-round federated job on the tiny default, run folder included."""

import json
from pathlib import Path

import pytest
import torch

from fedumm.config import load_config
from fedumm.engines.simulation import centralized_config, majority_baseline_accuracy, simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llava_path):
    out = tmp_path_factory.mktemp("runs")
    config = load_config(None, [
        f"model.name_or_path={tiny_llava_path}", "model.device=cpu",
        "federation.num_clients=2", "federation.rounds=2",
        "data.synthetic.train_samples=300", "data.synthetic.test_samples=80",
        "train.batch_size=8", "train.local_epochs=2", "train.lr=0.005",
        "output.progress=false", f"output.dir={out}", "output.name=e2e",
    ])
    return config, simulate(config)


def test_global_accuracy_beats_the_untrained_model(run):
    _, result = run
    # The untrained adapter emits unrelated tokens: 0% VQA accuracy.
    assert result.federated.initial_accuracy < 0.05
    assert result.federated.final_accuracy > result.federated.initial_accuracy + 0.2
    assert result.centralized.final_accuracy > result.centralized.initial_accuracy + 0.2


def test_metrics_jsonl_has_one_record_per_round(run):
    config, result = run
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    fed = [r for r in records if r["phase"] == "federated"]
    assert [r["round"] for r in fed] == [0, 1, 2]
    last = fed[-1]
    assert last["clients"] == [0, 1]
    assert set(last["client_metrics"]) == {"0", "1"}
    for metrics in last["client_metrics"].values():
        assert 0.0 <= metrics["local_vqa_accuracy"] <= 1.0 and metrics["steps"] > 0
    assert set(last["global"]["by_answer_type"]) == {"yes/no", "color", "count", "shape"}
    # Bytes are measured from the safetensors payloads: 12,288 float32 values + header.
    upload = last["bytes"]["upload"]["0"]
    assert 12_288 * 4 < upload < 12_288 * 4 + 4096
    assert last["bytes"]["total"] == sum(last["bytes"]["upload"].values()) + sum(last["bytes"]["download"].values())
    assert last["bytes"]["reduction_pct"] > 90
    assert [r["round"] for r in records if r["phase"] == "centralized"] == [0, 1, 2]


def test_run_folder_contents(run):
    config, result = run
    folder = Path(result.run_dir)
    for name in ("config.yaml", "metrics.jsonl", "partition.json", "summary.json",
                 "checkpoints/last.safetensors", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "centralized_adapter/adapter_config.json", "accuracy.png", "partition.png"):
        assert (folder / name).is_file(), name
    assert load_config(folder / "config.yaml") == config
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["federated_final_accuracy"] == result.federated.final_accuracy
    assert summary["trainable_parameters"] == 12_288
    assert (folder / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adapter_loads_with_peft_and_equals_the_final_global_state(run, tiny_llava_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from fedumm.adapters import get_adapter_state

    _, result = run
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava_path)
    loaded = PeftModel.from_pretrained(base, str(Path(result.run_dir) / "adapter"))
    # Loaded adapters are frozen by default; compare by name instead of trainability.
    state = {k.removeprefix("base_model.model.").replace(".default.", "."): p
             for k, p in loaded.named_parameters() if "lora_" in k}
    assert set(state) == set(result.federated.final_state)
    for key, tensor in result.federated.final_state.items():
        assert torch.equal(state[key].detach(), tensor), key


def test_existing_run_folder_is_not_overwritten(run):
    config, result = run
    marker = Path(result.run_dir) / "metrics.jsonl"
    before = marker.read_text()
    from fedumm.errors import ConfigError

    with pytest.raises(ConfigError, match="already exists; set output.overwrite=true"):
        simulate(config)
    assert marker.read_text() == before


def test_majority_baseline_hand_computed():
    train = [{"multiple_choice_answer": a} for a in ["yes", "yes", "no"]]
    test = [{"answers": ["yes"] * 10}, {"answers": ["no"] * 10}, {"answers": ["yes"] * 2 + ["no"] * 8}]
    answer, accuracy = majority_baseline_accuracy(train, test)
    # 1.0, 0.0, and for 2 matching of 10: (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert answer == "yes"
    assert accuracy == pytest.approx((1.0 + 0.0 + 0.6) / 3)


def test_centralized_budget_matches_federated_steps():
    config = load_config(None, ["federation.num_clients=8", "federation.fraction_fit=0.5", "train.local_steps=5"])
    central = centralized_config(config, 4)
    assert central.federation.num_clients == 1
    assert central.train.local_steps == 20  # 4 sampled clients x 5 steps per round


@pytest.mark.parametrize(("backend", "tiny_model"), [("blip_vqa", "tiny-blip-vqa"), ("janus", "tiny-janus")])
def test_one_set_switches_the_backend_and_its_tiny_model(tmp_path, backend, tiny_model):
    from fedumm.federation import ModelHost

    config = load_config(None, [
        f"model.backend={backend}", "model.device=cpu", "federation.num_clients=2", "federation.rounds=1",
        "data.synthetic.train_samples=24", "data.synthetic.test_samples=4", "data.partition.min_samples=4",
        "train.local_steps=1", "train.batch_size=4", "eval.centralized_baseline=false",
        "output.progress=false", f"output.dir={tmp_path}",
    ])
    host = ModelHost(config)
    assert host.backend.name == backend and host.backend.name_or_path == tiny_model
    result = simulate(config, host=host)
    assert [r["round"] for r in result.federated.records] == [0, 1]


def test_connector_strategy_on_blip_is_a_config_error():
    from fedumm.errors import ConfigError
    from fedumm.federation import ModelHost

    config = load_config(None, ["model.backend=blip_vqa", "model.device=cpu", "finetune.strategy=connector"])
    with pytest.raises(ConfigError, match="backend blip_vqa has no 'connector' module group"):
        ModelHost(config)
