"""End to end: a 2-client x 2-round federated job on the tiny default, run folder included."""

import json
from pathlib import Path

import pytest
import torch

from fedumm.engines.simulation import simulate
from fedumm.federation.job import centralized_config
from fedumm.validation import load_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llava_path):
    out = tmp_path_factory.mktemp("runs")
    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "federation.num_clients=2",
            "federation.rounds=2",
            "data.synthetic.train_samples=300",
            "data.synthetic.test_samples=80",
            "train.batch_size=8",
            "train.local_epochs=2",
            "train.lr=0.005",
            "output.progress=false",
            f"output.dir={out}",
            "output.name=e2e",
        ],
    )
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
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "partition.json",
        "summary.json",
        "checkpoints/last.safetensors",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "centralized_adapter/adapter_config.json",
        "accuracy.png",
        "partition.png",
    ):
        assert (folder / name).is_file(), name
    assert load_run_config(folder / "config.yaml") == config
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["federated_final_accuracy"] == result.federated.final_accuracy
    assert summary["trainable_parameters"] == 12_288
    assert (folder / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adapter_loads_with_peft_and_equals_the_final_global_state(run, tiny_llava_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    _, result = run
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava_path)
    loaded = PeftModel.from_pretrained(base, str(Path(result.run_dir) / "adapter"))
    # Loaded adapters are frozen by default; compare by name instead of trainability.
    state = {
        k.removeprefix("base_model.model.").replace(".default.", "."): p
        for k, p in loaded.named_parameters()
        if "lora_" in k
    }
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


def test_centralized_budget_matches_federated_steps():
    config = load_run_config(None, ["federation.num_clients=8", "federation.fraction_fit=0.5", "train.local_steps=5"])
    central = centralized_config(config)
    assert central.federation.num_clients == 1
    assert central.train.local_steps == 20  # 4 sampled clients x 5 steps per round


@pytest.mark.parametrize(("backend", "tiny_model"), [("blip_vqa", "tiny-blip-vqa"), ("janus", "tiny-janus")])
def test_one_set_switches_the_backend_and_its_tiny_model(tmp_path, backend, tiny_model):
    from fedumm.federation import ModelHost

    config = load_run_config(
        None,
        [
            f"model.backend={backend}",
            "model.device=cpu",
            "federation.num_clients=2",
            "federation.rounds=1",
            "data.synthetic.train_samples=24",
            "data.synthetic.test_samples=4",
            "data.partition.min_samples=4",
            "train.local_steps=1",
            "train.batch_size=4",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={tmp_path}",
        ],
    )
    host = ModelHost(config)
    assert host.backend.name == backend and host.backend.name_or_path == tiny_model
    result = simulate(config, host=host)
    assert [r["round"] for r in result.federated.records] == [0, 1]


def test_connector_strategy_on_blip_is_a_config_error():
    from fedumm.errors import ConfigError
    from fedumm.federation import ModelHost

    config = load_run_config(None, ["model.backend=blip_vqa", "model.device=cpu", "finetune.strategy=connector"])
    with pytest.raises(ConfigError, match="backend blip_vqa has no 'connector' module group"):
        ModelHost(config)


# ---------------------------------------------------------------- resume and partial participation


def _tiny(model_path, out, name, *extra):
    return load_run_config(
        None,
        [
            f"name={name}",
            f"model.name_or_path={model_path}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            "federation.num_clients=3",
            "federation.fraction_fit=0.5",  # 2 of 3 clients a round
            "data.synthetic.train_samples=60",
            "data.synthetic.test_samples=8",
            "data.partition.min_samples=4",
            "train.batch_size=4",
            "train.local_steps=2",
            "eval.clients=false",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={out}",
            *extra,
        ],
    )


def _checkpoint_files(run_dir):
    from safetensors.torch import load_file

    tensors = load_file(str(Path(run_dir) / "checkpoints" / "last.safetensors"))  # server and client state
    split = [
        {k: v for k, v in tensors.items() if k.split("/")[0] in kinds}
        for kinds in (("global", "server"), ("client", "local"))
    ]
    return split[0], split[1]


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _assert_identical(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("strategy", ["scaffold", "fedadam"])
def test_two_rounds_equal_one_round_then_resume_bit_for_bit(tmp_path, tiny_llava_path, strategy):
    from fedumm.cli import main
    from fedumm.federation import ModelHost

    # Prepare: the same job for 2 rounds straight, and for 1 round.
    two = _tiny(tiny_llava_path, tmp_path, "two", f"federation.strategy.name={strategy}", "federation.rounds=2")
    one = _tiny(tiny_llava_path, tmp_path, "one", f"federation.strategy.name={strategy}", "federation.rounds=1")
    host = ModelHost(two)
    straight = simulate(two, host=host)
    simulate(one, host=host)
    # Execute: resume "one" for its second round. SCAFFOLD: in place through the CLI, as a user
    # does; FedAdam: into a new run folder through the config key.
    if strategy == "scaffold":
        assert main(["run", "--resume", str(tmp_path / "one"), "--set", "federation.rounds=2"]) == 0
        resumed_dir = tmp_path / "one"
    else:
        resumed = _tiny(
            tiny_llava_path,
            tmp_path,
            "branch",
            f"federation.strategy.name={strategy}",
            "federation.rounds=2",
            f"federation.resume_from={tmp_path / 'one'}",
        )
        resumed_dir = Path(simulate(resumed, host=host).run_dir)
    # Assert: global adapter, strategy state and client state equal the straight run's, bit for bit.
    (state_a, clients_a), (state_b, clients_b) = _checkpoint_files(straight.run_dir), _checkpoint_files(resumed_dir)
    assert any(k.startswith("server/") for k in state_a)
    _assert_identical(state_a, state_b)
    _assert_identical(clients_a, clients_b)
    if strategy == "scaffold":
        assert any(k.startswith("client/") for k in clients_a)
    records_a, records_b = _metrics(straight.run_dir), _metrics(resumed_dir)
    assert [r["round"] for r in records_b] == [0, 1, 2]
    assert [r["global"] for r in records_b] == [r["global"] for r in records_a]
    assert [r.get("clients") for r in records_b] == [r.get("clients") for r in records_a]
    summary = json.loads((resumed_dir / "summary.json").read_text())
    assert summary["resumed_from"]["round"] == 1
    assert load_run_config(resumed_dir / "config.yaml").federation.rounds == 2


def test_resume_refuses_another_models_checkpoint_before_touching_the_run(tmp_path, tiny_llava_path):
    from fedumm.errors import ConfigError

    simulate(_tiny(tiny_llava_path, tmp_path, "r8", "federation.rounds=1"))
    before = (tmp_path / "r8" / "metrics.jsonl").read_text()
    other = _tiny(
        tiny_llava_path,
        tmp_path,
        "r8",
        "federation.rounds=2",
        "adapter.r=4",
        f"federation.resume_from={tmp_path / 'r8'}",
    )
    with pytest.raises(
        ConfigError,
        match=r"federation.resume_from: .*r8/checkpoints/last.safetensors: its global "
        r"adapter does not match the model's adapter: shape mismatch",
    ):
        simulate(other)
    assert (tmp_path / "r8" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "scaffold"])
def test_partial_participation_end_to_end(tmp_path, tiny_llava_path, strategy):
    from fedumm.federation import ModelHost, Server

    # Prepare: 4 clients, fraction_fit 0.5 -> 2 a round, 3 rounds.
    config = _tiny(
        tiny_llava_path,
        tmp_path,
        strategy,
        f"federation.strategy.name={strategy}",
        "federation.num_clients=4",
        "federation.rounds=3",
    )
    host = ModelHost(config)
    initial = {k: v.clone() for k, v in host.initial_state.items()}
    # Execute
    result = simulate(config, host=host)
    # Assert: each round trains exactly the clients the seeded sampler draws, and only those report.
    sampler = Server(None, {}, config.federation, config.seed)
    records = result.federated.records[1:]
    for record in records:
        expected = sampler.sample_clients(record["round"], [0, 1, 2, 3])
        assert record["clients"] == expected and len(expected) == 2
        assert sorted(record["client_metrics"]) == [str(c) for c in expected]
        assert set(record["bytes"]["download"]) == {str(c) for c in expected}
    assert len({tuple(r["clients"]) for r in records}) > 1  # different clients in different rounds
    sampled = {c for r in records for c in r["clients"]}
    state, clients = _checkpoint_files(result.run_dir)
    if strategy == "scaffold":
        # Only sampled clients have a c_i, and c = (1/N) sum_i c_i over ALL N = 4 clients (never
        # sampled: c_i = 0): the server's |S|/N-scaled update keeps this invariant under sampling.
        assert {int(k.split("/")[1]) for k in clients} == sampled
        for key in (k.removeprefix("server/control/") for k in state if k.startswith("server/control/")):
            mean = sum(clients.get(f"client/{cid}/{key}", torch.zeros(())) for cid in range(4)) / 4
            assert torch.allclose(state[f"server/control/{key}"], mean, atol=1e-6), key
    else:
        assert clients == {}
    final = result.federated.final_state
    _assert_identical({k.removeprefix("global/"): v for k, v in state.items() if k.startswith("global/")}, final)
    assert any(not torch.equal(final[k], initial[k]) for k in initial)


# ---------------------------------------------------------------- heterogeneous LoRA ranks

HET_RANKS = [4, 4, 8, 8, 16, 16]


def _het(model_path, out, name, strategy, *extra):
    return load_run_config(
        None,
        [
            f"name={name}",
            f"model.name_or_path={model_path}",
            "model.device=cpu",
            "model.max_new_tokens=2",
            "federation.num_clients=6",
            "federation.rounds=2",
            f"federation.strategy.name={strategy}",
            f"adapter.client_ranks={HET_RANKS}",
            "data.synthetic.train_samples=60",
            "data.synthetic.test_samples=8",
            "data.partition.min_samples=4",
            "train.batch_size=4",
            "train.local_steps=2",
            "eval.clients=false",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={out}",
            *extra,
        ],
    )


@pytest.mark.parametrize("strategy", ["hetlora", "flexlora", "flora"])
def test_heterogeneous_ranks_4_8_16_over_6_clients(tmp_path, tiny_llava_path, strategy):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from fedumm import codec
    from fedumm.federation import ModelHost
    from fedumm.lowrank import truncate

    config = _het(tiny_llava_path, tmp_path, strategy, strategy)
    host = ModelHost(config)
    initial = dict(host.initial_state)
    # Execute
    result = simulate(config, host=host)
    # Assert: both rounds aggregated every client.
    records = _metrics(result.run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(r["client_metrics"].keys() == {str(c) for c in range(6)} for r in records[1:])
    assert not any("rejected" in r or r.get("aggregated") is False for r in records)
    # Round 1: client k receives exactly the initial global adapter cut to its own rank.
    for cid, rank in enumerate(HET_RANKS):
        expected = len(codec.encode_message({"state": truncate(initial, rank), "extras": {}}))
        assert records[1]["bytes"]["download"][str(cid)] == expected, cid
    # Uploads carry the client's own rank (HetLoRA may prune below it): rank-4 < rank-8 < rank-16.
    for record in records[1:]:
        up = {rank: record["bytes"]["upload"][str(c)] for c, rank in enumerate(HET_RANKS)}
        assert up[4] < up[8] < up[16]
        down = {rank: record["bytes"]["download"][str(c)] for c, rank in enumerate(HET_RANKS)}
        assert down[4] < down[8] < down[16]
    # The saved global adapter loads with plain peft: rank adapter.r (16), FLoRA the merged rank.
    loaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava_path), str(Path(result.run_dir) / "adapter")
    )
    saved_rank = loaded.peft_config["default"].r
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["adapter_rank"] == saved_rank
    final_ranks = [summary["client_ranks"][str(c)] for c in range(6)]
    assert all(1 <= got <= rank for got, rank in zip(final_ranks, HET_RANKS))
    if strategy != "hetlora":  # only HetLoRA prunes
        assert final_ranks == HET_RANKS
    if strategy == "flora":
        assert saved_rank >= 1
        assert json.loads((Path(result.run_dir) / "adapter" / "adapter_config.json").read_text())["r"] == saved_rank
    else:
        assert saved_rank == 16
        state = {
            k.removeprefix("base_model.model.").replace(".default.", "."): p
            for k, p in loaded.named_parameters()
            if "lora_" in k
        }
        for key, tensor in result.federated.final_state.items():
            assert torch.equal(state[key].detach(), tensor), key


@pytest.mark.parametrize("strategy", ["hetlora", "flora"])
def test_heterogeneous_rank_run_resumes_bit_for_bit(tmp_path, tiny_llava_path, strategy):
    from fedumm.federation import ModelHost

    ranks = ["adapter.client_ranks=[4,8,16]", f"federation.strategy.name={strategy}"]
    if strategy == "hetlora":
        ranks.append("federation.strategy.decay=0.5")
    two = _tiny(tiny_llava_path, tmp_path, "two", *ranks, "federation.rounds=2")
    one = _tiny(tiny_llava_path, tmp_path, "one", *ranks, "federation.rounds=1")
    host = ModelHost(two)
    straight = simulate(two, host=host)
    simulate(one, host=host)
    resumed = _tiny(
        tiny_llava_path, tmp_path, "branch", *ranks, "federation.rounds=2", f"federation.resume_from={tmp_path / 'one'}"
    )
    resumed_dir = Path(simulate(resumed, host=host).run_dir)
    (state_a, _), (state_b, _) = _checkpoint_files(straight.run_dir), _checkpoint_files(resumed_dir)
    prefix = "server/hetlora/ranks" if strategy == "hetlora" else "server/flora_delta/"
    assert any(k.startswith(prefix) for k in state_a)
    _assert_identical(state_a, state_b)
    records_a, records_b = _metrics(straight.run_dir), _metrics(resumed_dir)
    assert [r["global"] for r in records_b] == [r["global"] for r in records_a]
    assert [r["bytes"] for r in records_b[1:]] == [r["bytes"] for r in records_a[1:]]


def test_hetlora_clients_self_prune_end_to_end(tmp_path, tiny_llava_path):
    # A strong tail regulariser (reg 10) shrinks the tail below the received one from round 2 on.
    config = _tiny(
        tiny_llava_path,
        tmp_path,
        "prune",
        "adapter.client_ranks=[4,8,16]",
        "federation.fraction_fit=1.0",
        "federation.strategy.name=hetlora",
        "federation.strategy.decay=0.5",
        "federation.strategy.reg=10",
        "federation.rounds=3",
    )
    result = simulate(config)
    records = _metrics(result.run_dir)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert not any("rejected" in r for r in records)
    final = [summary["client_ranks"][str(c)] for c in range(3)]
    assert final != [4, 8, 16] and all(f in (r, r // 2, r // 4) for f, r in zip(final, [4, 8, 16]))
    # A client that pruned in round 2 (a smaller upload) gets round 3's global adapter at that rank.
    for cid in range(3):
        if _bytes(records[2], cid, "upload") < _bytes(records[1], cid, "upload"):
            assert _bytes(records[3], cid, "download") < _bytes(records[1], cid, "download")


def _bytes(record, cid, direction):
    return record["bytes"][direction][str(cid)]


def test_ffa_lora_run_trains_and_sends_b_only(tmp_path, tiny_llava_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from fedumm.federation import ModelHost

    config = _tiny(tiny_llava_path, tmp_path, "ffa", "adapter.freeze_a=true", "federation.rounds=2")
    host = ModelHost(config)
    seeded_a = {k: p.detach().clone() for k, p in host.model.named_parameters() if "lora_A" in k}
    result = simulate(config, host=host)
    # Only B travels: every trained key is a lora_B factor, and uploads carry B's bytes only.
    assert result.federated.final_state and all(".lora_B." in k for k in result.federated.final_state)
    b_bytes = sum(t.numel() * 4 for t in result.federated.final_state.values())
    for record in _metrics(result.run_dir)[1:]:
        assert all(b_bytes < n < b_bytes + 16_384 for n in record["bytes"]["upload"].values())
    # The saved adapter carries the seeded A, unchanged, next to the trained B.
    loaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava_path), str(Path(result.run_dir) / "adapter")
    )
    saved_a = {k: p for k, p in loaded.named_parameters() if "lora_A" in k}
    assert saved_a.keys() == seeded_a.keys()
    assert all(torch.equal(saved_a[k].detach(), seeded_a[k]) for k in seeded_a)
    assert any(torch.count_nonzero(t) for t in result.federated.final_state.values())


# ---------------------------------------------------------------- compressed updates


def _compressed_checkpoint(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "checkpoints" / "last.safetensors"))


def test_compressed_run_with_error_feedback_resumes_bit_for_bit(tmp_path, tiny_llava_path):
    from fedumm.cli import main
    from fedumm.federation import ModelHost

    # Prepare: top-k 10% with error feedback; 2 of 3 clients a round, so a client sampled in
    # round 2 carries its residual from round 1 across the resume.
    settings = ("federation.compression.codec=topk", "federation.compression.error_feedback=true")
    two = _tiny(tiny_llava_path, tmp_path, "two", *settings, "federation.rounds=2")
    one = _tiny(tiny_llava_path, tmp_path, "one", *settings, "federation.rounds=1")
    host = ModelHost(two)
    straight = simulate(two, host=host)
    simulate(one, host=host)
    resumed_round_one = _compressed_checkpoint(tmp_path / "one")
    # Execute: resume "one" for its second round, in place through the CLI.
    assert main(["run", "--resume", str(tmp_path / "one"), "--set", "federation.rounds=2"]) == 0
    # Assert: global adapter and every residual equal the straight run's, bit for bit.
    a, b = _compressed_checkpoint(straight.run_dir), _compressed_checkpoint(tmp_path / "one")
    assert any(k.startswith("residual/") for k in resumed_round_one)
    assert any(k.startswith("residual/") for k in a)
    _assert_identical(a, b)
    records_a, records_b = _metrics(straight.run_dir), _metrics(tmp_path / "one")
    assert [r["global"] for r in records_b] == [r["global"] for r in records_a]
    assert [r.get("bytes") for r in records_b] == [r.get("bytes") for r in records_a]
    # Round 2 sampled a client of round 1 again: its residual was used, not restarted.
    rounds = {r["round"]: set(r["clients"]) for r in records_a if r["round"] > 0}
    assert rounds[1] & rounds[2]


@pytest.mark.parametrize(("codec", "fields"), [("int8", {"codes": torch.int8, "scales": torch.bfloat16})])
def test_upload_bytes_are_the_encoded_payloads_length(tmp_path, tiny_llava_path, codec, fields):
    from fedumm import codec as wire
    from fedumm import compression
    from fedumm.federation import ModelHost

    # Prepare
    config = _tiny(tiny_llava_path, tmp_path, "int8", f"federation.compression.codec={codec}", "federation.rounds=1")
    host = ModelHost(config)
    shapes = {k: tuple(v.shape) for k, v in host.initial_state.items()}
    # Execute
    result = simulate(config, host=host)
    # Assert: the recorded upload is the length of a message holding int8 codes for the 12,288
    # adapter entries and bfloat16 scales for the 480 rows (16 per lora_A, 64 per lora_B).
    layout = compression.expected_layout(compression.build_codec(codec), shapes, torch.float32)
    assert {f: n for f, (_, n) in layout.items()} == {"codes": 12_288, "scales": 480}
    zeros = {f: torch.zeros(n, dtype=fields[f]) for f, (_, n) in layout.items()}
    meta = compression.metadata(compression.build_codec(codec), shapes)
    expected = len(wire.encode_message({"delta": zeros, "extras": {}}, "float32", meta, exact_parts=("delta",)))
    plain = len(wire.encode_message({"state": host.initial_state, "extras": {}}, "float32"))
    record = _metrics(result.run_dir)[-1]
    assert set(record["bytes"]["upload"].values()) == {expected}
    assert 12_288 + 480 * 2 < expected < 12_288 + 480 * 2 + 512  # codes + scales + a header of a few hundred bytes
    assert expected < 0.3 * plain and record["bytes"]["download"][str(record["clients"][0])] == plain


def test_local_dp_composes_with_topk_and_error_feedback(tmp_path, tiny_llava_path):
    # Prepare: local DP-FedAvg (each client clips and noises its update), then top-k 1% with
    # error feedback on that noised update.
    config = _tiny(
        tiny_llava_path,
        tmp_path,
        "dp",
        "federation.rounds=2",
        "privacy.level=client",
        "privacy.mechanism=local",
        "privacy.noise_multiplier=0.5",
        "privacy.seeded_noise=true",
        "federation.compression.codec=topk",
        "federation.compression.topk_fraction=0.01",
        "federation.compression.error_feedback=true",
    )
    # Execute
    result = simulate(config)
    # Assert: every sampled reply was accepted, the budget was spent, the uploads are top-k sized
    # (10 of 1,024 entries in each of 12 tensors: 120 float32 values + 120 int16 indices + header)
    # and residuals were kept: the noise and the dropped 99% wait in them.
    records = _metrics(result.run_dir)[1:]
    assert all("rejected" not in r for r in records)
    assert all(r["privacy"]["epsilon"] > 0 for r in records)
    uploads = {size for r in records for size in r["bytes"]["upload"].values()}
    assert all(120 * 6 < size < 120 * 6 + 512 for size in uploads)
    residuals = {k: v for k, v in _compressed_checkpoint(result.run_dir).items() if k.startswith("residual/")}
    assert residuals and all(bool(torch.isfinite(v).all()) for v in residuals.values())


def test_every_record_splits_its_round_time(run):
    # Prepare
    _, result = run
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    parts = ("train", "client_eval", "global_eval", "serialise", "aggregate")
    # Assert: every record of both phases has the split; the parts never add up past the wall time.
    for record in records:
        seconds = record["seconds"]
        assert set(parts) <= set(seconds) and all(seconds[p] >= 0 for p in parts)
        assert sum(seconds[p] for p in parts) + seconds["other"] == pytest.approx(seconds["round"], rel=1e-6)
        assert sum(seconds[p] for p in parts) <= seconds["round"]
    trained = [r for r in records if r["round"] > 0]
    assert all(r["seconds"]["train"] > 0 and r["seconds"]["global_eval"] > 0 for r in trained)
    # The clients' own seconds travel in their replies: the record's train time is their sum.
    for record in trained:
        reported = sum(m["train_seconds"] for m in record["client_metrics"].values())
        assert record["seconds"]["train"] == pytest.approx(reported)
    split = result.summary["federated_time_split"]
    fed = [r for r in records if r["phase"] == "federated" and r["round"] > 0]
    assert split["train"] == pytest.approx(sum(r["seconds"]["train"] for r in fed))
    assert split["round"] == pytest.approx(result.summary["federated_seconds"])
    assert "federated round time:" in (Path(result.run_dir) / "summary.txt").read_text()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """configs/unified_mixed.yaml on a reduced budget: 3 clients (vqa, t2i, both), 2 rounds."""
    out = tmp_path_factory.mktemp("runs")
    config = load_run_config(
        Path(__file__).parents[2] / "configs" / "unified_mixed.yaml",
        [
            "model.device=cpu",
            "federation.num_clients=3",
            "federation.rounds=2",
            "data.tasks=[[vqa],[t2i],[vqa,t2i]]",
            "data.synthetic.train_samples=64",
            "data.synthetic.test_samples=10",
            "train.batch_size=8",
            "train.local_steps=4",
            "train.lr=0.02",
            "eval.batch_size=10",
            "output.progress=false",
            f"output.dir={out}",
            "output.name=mixed",
        ],
    )
    return config, simulate(config)


def test_a_mixed_federation_scores_both_tasks_and_trains_each_adapter_where_its_rows_are(mixed_run):
    _, result = mixed_run
    folder = Path(result.run_dir)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    fed = [r for r in records if r["phase"] == "federated"]
    # Every round scores both tasks, each with its own metrics: 6 vqa and 4 t2i test rows (task_mix 0.4).
    for record in fed:
        by_task = record["global"]["by_task"]
        assert (by_task["vqa"]["n"], by_task["t2i"]["n"]) == (6, 4)
        assert "vqa_accuracy" in by_task["vqa"] and "image_token_accuracy" in by_task["t2i"]
    # The replies say which adapter each client trained: client 0 understanding, client 1 generation.
    for record in fed[1:]:
        rows = {
            c: (m["trained_rows.understanding"], m["trained_rows.generation"])
            for c, m in record["client_metrics"].items()
        }
        assert rows["0"][1] == 0 and rows["0"][0] > 0
        assert rows["1"][0] == 0 and rows["1"][1] > 0
        assert rows["2"][0] > 0 and rows["2"][1] > 0
    # The generation adapter learns: teacher-forced image-token NLL falls from the untrained model's.
    first, last = fed[0]["global"]["by_task"]["t2i"], fed[-1]["global"]["by_task"]["t2i"]
    assert last["image_token_nll"] < first["image_token_nll"] - 0.3
    assert last["image_token_accuracy"] > first["image_token_accuracy"]
    # Both adapters are saved in peft's layout for named adapters.
    for name in ("understanding", "generation"):
        assert (folder / "adapter" / name / "adapter_config.json").is_file(), name
