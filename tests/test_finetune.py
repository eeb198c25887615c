import json
import re

import pytest
import torch

from fedumm import codec
from fedumm.adapters import canonical_key
from fedumm.config import FinetuneConfig
from fedumm.data.federated import ClientData
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.federation import ClientRuntime, ModelHost, Server
from fedumm.finetune import plan_for_round, units_over_run
from fedumm.strategies import FedAvg
from fedumm.validation import load_run_config


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
        (
            ["finetune.strategy=custom", "finetune.groups={lora: share, language: local}"],
            "either lora or the full language",
        ),
        (["finetune.strategy=two_stage", "finetune.two_stage_rounds=12"], "must be below federation.rounds"),
        (["finetune.strategy=custom", "finetune.groups={audio: share}"], "finetune.groups.audio"),
    ],
)
def test_bad_finetune_configs(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_run_config(None, overrides)


def _setup(tiny_llava_path, tmp_path, *overrides):
    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "federation.rounds=3",
            "train.local_steps=2",
            "train.batch_size=4",
            "eval.clients=false",
            *overrides,
        ],
    )
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
    assert {canonical_key(n) for n in changed} <= expected_keys
    if "connector" in expected_units:
        assert any("multi_modal_projector" in k for k in sent)


def test_two_stage_switches_from_connector_to_lora(tiny_llava_path, tmp_path):
    _, host, client, server = _setup(
        tiny_llava_path, tmp_path, "finetune.strategy=two_stage", "finetune.two_stage_rounds=1"
    )
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
    _, host, client, server = _setup(
        tiny_llava_path, tmp_path, "finetune.strategy=custom", "finetune.groups={lora: share, connector: local}"
    )
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
    config = load_run_config(
        None, [f"model.name_or_path={tiny_llava_path}", "model.device=cpu", "finetune.strategy=connector"]
    )
    with pytest.raises(ConfigError, match="has no 'connector' module group"):
        ModelHost(config)


# -- every strategy on every family that has a connector -----------------------------------

from fedumm.models.tiny import resolve_model_path  # noqa: E402
from fedumm.strategies import ClientAlgorithm  # noqa: E402
from fedumm.types import LocalHooks  # noqa: E402

#: tiny model -> backend; every family with a vision-language connector (BLIP has none).
CONNECTOR_FAMILIES = {
    "tiny-llava": "hf_vlm",
    "tiny-llava-next": "hf_vlm",
    "tiny-qwen2-vl": "hf_vlm",
    "tiny-qwen2.5-vl": "hf_vlm",
    "tiny-idefics3": "hf_vlm",
    "tiny-smolvlm": "hf_vlm",
    "tiny-paligemma": "hf_vlm",
    "tiny-janus": "janus",
    "tiny-minicpm-v": "hf_vlm",
    "tiny-minicpm-v4.7": "hf_vlm",
    "compose": "hf_vlm",  # model.compose of the tiny parts (a new LLaVA connector)
}
#: How each entry names its model.
MODEL_KEYS = {
    "compose": ["model.name_or_path=null", "model.compose={vision: tiny-clip-vision, language: tiny-llama}"],
}
#: strategy -> (overrides, per round: (units sent, units trained and kept on the client))
STRATEGY_ROUNDS = {
    "lora": (["finetune.strategy=lora"], [(["lora"], []), (["lora"], [])]),
    "connector": (["finetune.strategy=connector"], [(["connector"], []), (["connector"], [])]),
    "lora+connector": (
        ["finetune.strategy=lora+connector"],
        [(["lora", "connector"], []), (["lora", "connector"], [])],
    ),
    "two_stage": (
        ["finetune.strategy=two_stage", "finetune.two_stage_rounds=1"],
        [(["connector"], []), (["lora"], [])],
    ),
    "custom_local": (
        ["finetune.strategy=custom", "finetune.groups={lora: share, connector: local}"],
        [(["lora"], ["connector"]), (["lora"], ["connector"])],
    ),
}


class _StartOfTraining(ClientAlgorithm):
    """Records the trained tensors as local training starts (what the client loaded)."""

    def __init__(self):
        self.seen: list[dict[str, torch.Tensor]] = []

    def hooks(self, global_state, server_extras, client_state):
        seen = self.seen

        class Capture(LocalHooks):
            def extra_loss(self, params):
                if len(seen) < self.round_count:
                    seen.append({k: p.detach().clone() for k, p in params.items()})
                return None

        hook = Capture()
        hook.round_count = len(seen) + 1
        return hook


def _expected_keys(host, units):
    """Canonical parameter names of ``units``, read off the model by name (not via host.units):
    LoRA tensors, and each group's regex over the model's parameters."""
    names = {canonical_key(n) for n, _ in host.model.named_parameters() if ".original_module." not in n}
    keys = set()
    for unit in units:
        if unit == "lora":
            keys |= {k for k in names if ".lora_" in k}
        else:
            regex = re.compile(host.backend.module_groups[unit])
            keys |= {k for k in names if ".lora_" not in k and regex.fullmatch(k)}
    return keys


@pytest.mark.parametrize("strategy", list(STRATEGY_ROUNDS))
@pytest.mark.parametrize("tiny", list(CONNECTOR_FAMILIES))
def test_strategy_sends_and_changes_exactly_its_units_on_every_family(tiny, strategy):
    overrides, rounds = STRATEGY_ROUNDS[strategy]
    config = load_run_config(
        None,
        [
            f"model.backend={CONNECTOR_FAMILIES[tiny]}",
            *MODEL_KEYS.get(tiny, [f"model.name_or_path={resolve_model_path(tiny)}"]),
            "model.device=cpu",
            "federation.rounds=2",
            "train.local_steps=1",
            "train.batch_size=4",
            "eval.clients=false",
            *overrides,
        ],
    )
    host = ModelHost(config)
    algorithm = _StartOfTraining()
    client = ClientRuntime(ClientData(0, make_synthetic_vqa(4, seed=9), []), host, config, algorithm)
    server = Server(FedAvg(), host.initial_state, config.federation, config.seed)
    kept: dict[str, torch.Tensor] = {}
    for round_num, (sent_units, local_units) in enumerate(rounds, start=1):
        sent_keys, local_keys = _expected_keys(host, sent_units), _expected_keys(host, local_units)
        assert sent_keys and all(_expected_keys(host, [u]) for u in sent_units + local_units)
        before = _snapshot(host)
        reply = client.fit(server.broadcast(round_num), round_num)
        sent = codec.decode_message(reply.payload)["state"]
        assert set(sent) == sent_keys
        assert {canonical_key(n) for n in _changed(before, host)} == sent_keys | local_keys
        assert set(client.local_state) == local_keys
        if kept:  # round 2 started from this client's own kept-local tensors, not the reset ones
            start = algorithm.seen[-1]
            assert all(torch.equal(start[k], kept[k]) for k in local_keys)
            assert any(not torch.equal(kept[k], host.initial_local_state[k]) for k in local_keys)
        kept = {k: v.clone() for k, v in client.local_state.items()}
        server.aggregate([reply], round_num, trained_keys=sorted(sent_keys))
        host.reset_local()
    if tiny == "tiny-llava-next" and strategy != "lora":
        # image_newline sits on LlavaNextModel itself: trained in place, a unit tensor all the same.
        assert "model.image_newline" in host.parameters_of(["connector"])
        assert host.in_place_keys == ["model.image_newline"]


def test_full_language_model_fine_tuning_trains_and_sends_only_language(tiny_llava_path, tmp_path):
    _, host, client, server = _setup(
        tiny_llava_path, tmp_path, "finetune.strategy=custom", "finetune.groups={language: share}"
    )
    assert not any(".lora_" in n for n, _ in host.model.named_parameters())  # no LoRA layer at all
    language = {
        n
        for n, _ in host.model.get_base_model().named_parameters()
        if re.fullmatch(r"(.*\.)?(language_model|lm_head)\..*", canonical_key(n)) and ".original_module." not in n
    }
    expected = {canonical_key(n) for n in language}
    # 2 layers x 9 tensors, embeddings, final norm, lm_head
    assert len(expected) == 21 and set(host.initial_state) == expected
    before = _snapshot(host)
    reply = client.fit(server.broadcast(1), 1)
    assert set(codec.decode_message(reply.payload)["state"]) == expected
    assert {canonical_key(n) for n in _changed(before, host)} == expected
    trainable, total = host.count_parameters()
    vocab, hidden = 251, 64
    assert trainable == sum(host.initial_state[k].numel() for k in expected) > 2 * vocab * hidden
    # the PEFT folder holds the fine-tuned language model and loads back with peft
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    host.save_pretrained(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava_path), str(tmp_path / "adapter")
    )
    params = {canonical_key(n): p for n, p in loaded.named_parameters() if ".original_module." not in n}
    trained = host.get_state()
    assert all(torch.equal(params[k], trained[k]) for k in expected)


def test_lora_inside_a_fully_trained_group_is_a_config_error(tiny_llava_path):
    config = load_run_config(
        None,
        [
            f"model.name_or_path={tiny_llava_path}",
            "model.device=cpu",
            "finetune.strategy=custom",
            "finetune.groups={lora: share, vision: share}",
            "adapter.target_modules=.*q_proj",
        ],
    )
    with pytest.raises(
        ConfigError,
        match=r"adapter.target_modules: LoRA target 'model.vision_tower\..*q_proj' lies in the 'vision' group",
    ):
        ModelHost(config)


def test_two_stage_counts_the_parameters_of_both_stages(tiny_llava_path, tmp_path):
    _, host, _, _ = _setup(tiny_llava_path, tmp_path, "finetune.strategy=two_stage", "finetune.two_stage_rounds=2")
    # LLaVA connector: Linear(64->64) twice with bias = 2 x 4160; LoRA r=16 on 6 64x64 q/k/v = 12,288.
    connector, lora = 2 * (64 * 64 + 64), 12_288
    assert host.trainable_by_stage() == [
        {"first_round": 1, "last_round": 2, "units": ["connector"], "trainable": connector},
        {"first_round": 3, "last_round": 3, "units": ["lora"], "trainable": lora},
    ]
    trainable, total = host.count_parameters()
    assert trainable == connector + lora
    base = sum(
        p.numel() for n, p in host.model.named_parameters() if ".modules_to_save." not in n and ".lora_" not in n
    )
    assert total == base + lora  # the trained connector copy counted once


def test_in_place_parameters_persist_in_the_adapter_folder(tmp_path):
    from transformers import AutoModelForImageTextToText

    from fedumm.adapters import IN_PLACE_FILE, load_adapter

    path = resolve_model_path("tiny-llava-next")
    config = load_run_config(None, [f"model.name_or_path={path}", "model.device=cpu", "finetune.strategy=connector"])
    host = ModelHost(config)
    trained = {k: torch.randn_like(v) for k, v in host.get_state().items()}
    host.set_state(trained)
    host.save_pretrained(str(tmp_path / "adapter"))
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_model.safetensors", IN_PLACE_FILE}
    model = load_adapter(AutoModelForImageTextToText.from_pretrained(path), str(tmp_path / "adapter"))
    params = {canonical_key(n): p for n, p in model.named_parameters() if ".original_module." not in n}
    assert set(trained) == set(host.parameters_of(["connector"])) and "model.image_newline" in trained
    assert all(torch.equal(params[k], v) for k, v in trained.items())


def test_adapter_save_does_not_read_the_base_folder(tmp_path):
    """peft's save_embedding_layers="auto" opens the base's config.json and warns when the
    folder is gone (a cache removed while a long job ran): the save must not look there."""
    import shutil
    import warnings

    from transformers import AutoModelForImageTextToText

    folder = tmp_path / "base"
    AutoModelForImageTextToText.from_pretrained(resolve_model_path("tiny-llava")).save_pretrained(folder)
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(resolve_model_path("tiny-llava")).save_pretrained(folder)
    host = ModelHost(load_run_config(None, [f"model.name_or_path={folder}", "model.device=cpu"]))
    shutil.rmtree(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        host.save_pretrained(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(folder)


# -- classification scores -------------------------------------------------------------------


def _yes_no_rows(n, seed, answer=None):
    rows = [r for r in make_synthetic_vqa(4 * n, seed=seed) if r["answer_type"] == "yes/no"][:n]
    return [dict(r, multiple_choice_answer=answer, answers=[answer] * 10) if answer else r for r in rows]


def test_classification_score_is_the_softmax_of_the_label_log_likelihoods(tiny_llava_path, tmp_path):
    from sklearn.metrics import roc_auc_score

    _, host, _, _ = _setup(tiny_llava_path, tmp_path, "eval.task=classification", "eval.positive_label='yes'")
    rows = _yes_no_rows(6, seed=3)
    assert {r["multiple_choice_answer"] for r in rows} == {"yes", "no"}
    assert host.class_choices(rows) == ["yes", "no"]
    assert host.class_choices([r for r in rows if r["multiple_choice_answer"] == "no"]) is None
    scores = torch.tensor(host.positive_scores(rows, batch_size=4))
    ll = host.backend.score_choices(host.model, rows, ["yes", "no"])
    assert ll.shape == (6, 2) and (ll < 0).all()
    expected = torch.exp(ll[:, 0]) / (torch.exp(ll[:, 0]) + torch.exp(ll[:, 1]))
    assert torch.allclose(scores, expected.float(), atol=1e-6)
    assert ((scores > 0) & (scores < 1)).all()
    result = host.evaluate(rows, batch_size=4)
    truth = [int(r["multiple_choice_answer"] == "yes") for r in rows]
    assert result["roc_auc"] == pytest.approx(roc_auc_score(truth, scores.tolist()))


def test_training_towards_yes_raises_the_yes_score(tiny_llava_path, tmp_path):
    config, host, _, _ = _setup(tiny_llava_path, tmp_path, "eval.task=classification", "train.local_steps=15")
    rows = _yes_no_rows(8, seed=4)
    before = torch.tensor(host.positive_scores(rows, batch_size=8))
    host.train(
        _yes_no_rows(8, seed=5, answer="yes"),
        config.train,
        seed=0,
        hooks=None,
        progress=False,
        description="prefer yes",
    )
    after = torch.tensor(host.positive_scores(rows, batch_size=8))
    assert (after > before).all() and (after > 0.9).all()


@pytest.mark.slow
def test_classification_run_reports_roc_auc(tmp_path):
    from PIL import Image

    from fedumm.engines.simulation import simulate

    (tmp_path / "img").mkdir()
    lines = []
    for i in range(40):
        colour = (200, 0, 0) if i % 2 else (0, 0, 200)
        Image.new("RGB", (32, 32), colour).save(tmp_path / "img" / f"{i}.png")
        lines.append(
            json.dumps({"image": f"img/{i}.png", "question": "is it red ?", "answer": "yes" if i % 2 else "no"})
        )
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:32]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[32:]) + "\n")
    config = load_run_config(
        None,
        [
            "model.device=cpu",
            "data.source=table",
            f"data.table.path={tmp_path / 'train.jsonl'}",
            f"data.table.test_path={tmp_path / 'test.jsonl'}",
            "federation.num_clients=2",
            "federation.rounds=1",
            "data.partition.min_samples=4",
            "train.local_steps=2",
            "train.batch_size=4",
            "eval.task=classification",
            "eval.positive_label='yes'",
            "eval.centralized_baseline=false",
            "output.progress=false",
            f"output.dir={tmp_path / 'runs'}",
            "output.name=cls",
        ],
    )
    result = simulate(config)
    final = result.federated.records[-1]["global"]
    assert final["task"] == "classification" and final["n"] == 8
    assert final["roc_auc"] is not None and 0.0 <= final["roc_auc"] <= 1.0


def _t2i_rows(count: int) -> list[dict]:
    from fedumm.data.synthetic import COLORS, SHAPES, render_image

    colours = list(COLORS)
    return [
        {
            "task": "t2i",
            "prompt": f"a {colours[i % 6]} {SHAPES[i % 3]}",
            "image": render_image(SHAPES[i % 3], colours[i % 6], [(2 * i, 3 * i)], 32),
            "question": "",
            "answers": [],
            "multiple_choice_answer": "",
        }
        for i in range(count)
    ]


def test_janus_generation_groups_train_and_travel_as_selected(tmp_path):
    """gen_head shared (in the reply), gen_aligner local (trained, kept on the client, never
    sent), gen_embed frozen (unchanged), LoRA on the shared language model shared."""
    config = load_run_config(
        None,
        [
            "model.backend=janus",
            "model.device=cpu",
            "federation.rounds=2",
            "train.local_steps=2",
            "train.batch_size=4",
            "eval.clients=false",
            "finetune.strategy=custom",
            "finetune.groups={lora: share, gen_head: share, gen_aligner: local, gen_embed: frozen}",
        ],
    )
    host = ModelHost(config)
    client = ClientRuntime(ClientData(0, _t2i_rows(8), []), host, config)
    server = Server(FedAvg(), host.initial_state, config.federation, config.seed)
    keys = {unit: set(host.parameters_of([unit])) for unit in ("lora", "gen_head", "gen_aligner", "gen_embed")}
    assert all(keys.values())
    before = _snapshot(host)

    reply = client.fit(server.broadcast(1), 1)

    sent = set(codec.decode_message(reply.payload)["state"])
    assert sent == keys["lora"] | keys["gen_head"]
    changed = {canonical_key(n) for n in _changed(before, host)}
    assert keys["gen_head"] <= changed and keys["gen_aligner"] <= changed
    assert changed.isdisjoint(keys["gen_embed"])
    assert set(client.local_state) == keys["gen_aligner"]
    assert all(not torch.equal(client.local_state[k], host.initial_local_state[k]) for k in keys["gen_aligner"])
