import pytest
import torch

from fedumm import codec
from fedumm.config import FinetuneConfig, load_config
from fedumm.data.federated import ClientData
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.federation import ClientRuntime, ModelHost, Server
from fedumm.finetune import plan_for_round, units_over_run
from fedumm.strategies import FedAvg


@pytest.mark.parametrize(
    ("strategy", "round_num", "shared", "trained"),
    [
        ("lora", 1, ["lora"], ["lora"]),
        ("connector", 1, ["connector"], ["connector"]),
        ("lora+connector", 3, ["lora", "connector"], ["lora", "connector"]),
        ("two_stage", 1, ["connector"], ["connector"]),
        ("two_stage", 2, ["connector"], ["connector"]),
        ("two_stage", 3, ["lora"], ["lora"]),
    ],
)
def test_presets(strategy, round_num, shared, trained):
    plan = plan_for_round(FinetuneConfig(strategy=strategy, two_stage_rounds=2), round_num)
    assert plan.shared == shared and plan.trained == trained


def test_custom_modes_and_units_over_run():
    config = FinetuneConfig(strategy="custom", groups={"lora": "share", "connector": "local"})
    plan = plan_for_round(config, 5)
    assert plan.shared == ["lora"] and plan.trained == ["lora", "connector"]
    assert units_over_run(FinetuneConfig(strategy="two_stage", two_stage_rounds=1), 3, "share") == ["lora", "connector"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["finetune.groups={lora: share}"], "only used with finetune.strategy=custom"),
        (["finetune.strategy=custom", "finetune.groups={lora: frozen}"], "at least one unit not frozen"),
        (["finetune.strategy=custom", "finetune.groups={lora: share, language: local}"], "either lora or the full language"),
        (["finetune.strategy=two_stage", "finetune.two_stage_rounds=12"], "must be below federation.rounds"),
        (["finetune.strategy=custom", "finetune.groups={audio: share}"], "finetune.groups.audio"),
    ],
)
def test_bad_finetune_configs(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def _setup(tiny_llava_path, tmp_path, *overrides):
    config = load_config(None, [f"model.name_or_path={tiny_llava_path}", "model.device=cpu",
                                "federation.rounds=3", "train.local_steps=2", "train.batch_size=4",
                                "eval.clients=false", *overrides])
    host = ModelHost(config)
    client = ClientRuntime(ClientData(0, make_synthetic_vqa(8, seed=9), []), host, config)
    server = Server(FedAvg(), host.initial_state, config.federation, config.seed)
    return config, host, client, server


def _snapshot(host):
    return {k: p.detach().clone() for k, p in host.model.named_parameters()}


def _changed(before, host):
    return {k for k, p in host.model.named_parameters() if not torch.equal(p, before[k])}


@pytest.mark.parametrize(
    ("strategy", "sent_unit"),
    [("lora", "lora"), ("connector", "connector"), ("lora+connector", None)],
)
def test_each_preset_trains_and_sends_exactly_its_units(tiny_llava_path, tmp_path, strategy, sent_unit):
    _, host, client, server = _setup(tiny_llava_path, tmp_path, f"finetune.strategy={strategy}")
    expected_units = ["lora", "connector"] if sent_unit is None else [sent_unit]
    expected_keys = set(host.parameters_of(expected_units))
    before = _snapshot(host)

    reply = client.fit(server.broadcast(1), round_num=1)

    sent = codec.decode_message(reply.payload)["state"]
    assert set(sent) == expected_keys
    changed = _changed(before, host)
    assert changed, "nothing trained"
    # Only parameters of the expected units changed (peft names them with wrapper prefixes).
    from fedumm.adapters import canonical_key
    assert {canonical_key(n) for n in changed} <= expected_keys
    if "connector" in expected_units:
        assert any("multi_modal_projector" in k for k in sent)


def test_two_stage_switches_from_connector_to_lora(tiny_llava_path, tmp_path):
    _, host, client, server = _setup(tiny_llava_path, tmp_path, "finetune.strategy=two_stage",
                                     "finetune.two_stage_rounds=1")
    # The server holds both units from the start; round 1 sends back the connector only.
    assert set(server.global_state) == set(host.parameters_of(["lora", "connector"]))
    reply1 = client.fit(server.broadcast(1), 1)
    assert set(codec.decode_message(reply1.payload)["state"]) == set(host.parameters_of(["connector"]))
    server.aggregate([reply1], 1)
    connector_after_1 = {k: server.global_state[k].clone() for k in host.parameters_of(["connector"])}
    reply2 = client.fit(server.broadcast(2), 2)
    assert set(codec.decode_message(reply2.payload)["state"]) == set(host.parameters_of(["lora"]))
    server.aggregate([reply2], 2)
    # Stage 2 leaves the aggregated connector as it was after stage 1.
    assert all(torch.equal(server.global_state[k], v) for k, v in connector_after_1.items())


def test_local_units_stay_on_the_client_and_persist(tiny_llava_path, tmp_path):
    _, host, client, server = _setup(tiny_llava_path, tmp_path, "finetune.strategy=custom",
                                     "finetune.groups={lora: share, connector: local}")
    connector_keys = set(host.parameters_of(["connector"]))
    reply = client.fit(server.broadcast(1), 1)
    assert connector_keys.isdisjoint(codec.decode_message(reply.payload)["state"])
    kept = {k: v.clone() for k, v in client.local_state.items()}
    assert set(kept) == connector_keys
    assert any(not torch.equal(kept[k], host.initial_local_state[k]) for k in kept)
    # Another client (or the global evaluation) resets the unit; this client gets its own back.
    host.reset_local()
    server.aggregate([reply], 1)
    client.fit(server.broadcast(2), 2)
    assert any(not torch.equal(client.local_state[k], kept[k]) for k in kept)  # trained further
    assert set(client.local_state) == connector_keys


def test_backend_without_the_group_is_a_config_error(tiny_llava_path, monkeypatch):
    from fedumm.models.hf_vlm import HFVisionLanguageBackend

    monkeypatch.setattr(HFVisionLanguageBackend, "module_groups", {"language": r".*language_model\..*"})
    config = load_config(None, [f"model.name_or_path={tiny_llava_path}", "model.device=cpu",
                                "finetune.strategy=connector"])
    with pytest.raises(ConfigError, match="has no 'connector' module group"):
        ModelHost(config)
