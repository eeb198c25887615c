"""The registry checks that run after parsing, before anything loads."""

import subprocess
import sys

import pytest

from fedumm.config import load_config
from fedumm.errors import ConfigError
from fedumm.validation import load_run_config, validate


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.backend=nope"], r"model\.backend: unknown backend 'nope'; available: blip_vqa, emu3, hf_vlm, janus"),
        (["federation.strategy.name=nope"], r"federation\.strategy\.name: unknown strategy 'nope'"),
        (["federation.strategy.mu=0.1"], r"federation\.strategy\.mu: unknown key for this strategy"),
        (
            ["federation.strategy.name=krum", "federation.strategy.f=1", "federation.num_clients=4"],
            r"federation\.strategy\.f: ",
        ),
        (
            ["model.backend=blip_vqa", "finetune.strategy=custom", "finetune.groups={gen_head: share}"],
            r"finetune\.groups\.gen_head: not a unit of backend blip_vqa; known: lora, vision, connector, language$",
        ),
        (
            ["model.backend=janus", "finetune.strategy=custom", "finetune.groups={lora: share, audio: local}"],
            r"finetune\.groups\.audio: not a unit of backend janus; known: lora, vision, connector, language, "
            r"gen_embed, gen_aligner, gen_head, vq$",
        ),
        (
            ["eval.task=t2i"],
            r"eval\.task: scoring text-to-image rows \(t2i\) needs a backend that generates images \(emu3, janus\); "
            r"model\.backend is 'hf_vlm'$",
        ),
        (
            ["model.backend=blip_vqa", "eval.task=multitask", "eval.task_weights={vqa: 1, t2i: 1}"],
            r"eval\.task: scoring text-to-image rows \(t2i\) needs .*; model\.backend is 'blip_vqa'$",
        ),
    ],
)
def test_registry_problems_are_one_line_naming_the_key(overrides, fragment):
    parsed = load_config(None, overrides)  # parsing alone knows no registry
    with pytest.raises(ConfigError, match=rf"^invalid config <defaults>: {fragment}"):
        load_run_config(None, overrides)
    with pytest.raises(ConfigError, match=rf"^invalid config x\.yaml: {fragment}"):
        validate(parsed, "x.yaml")


def test_a_valid_config_passes_unchanged():
    config = load_config(None, ["federation.strategy.name=fedprox", "federation.strategy.mu=0.1"])
    assert validate(config) is config
    assert config.federation.strategy.params() == {"mu": 0.1}


@pytest.mark.parametrize("module", ["fedumm.config", "fedumm.strategies"])
def test_config_and_strategies_load_no_model_trainer_or_engine(module):
    prefixes = ("fedumm", "transformers", "peft")
    code = f"import {module}, sys; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    loaded = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded, "the probe printed nothing"
    assert not [
        m
        for m in loaded
        if m.startswith(
            ("fedumm.models", "fedumm.federation", "fedumm.engines", "fedumm.validation", "transformers", "peft")
        )
    ]


# ---------------------------------------------------------------- heterogeneous LoRA ranks

SIX = ["federation.num_clients=6"]
RANKS = "adapter.client_ranks=[4,4,8,8,16,16]"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # parsing: lengths, ids, bounds
        (["adapter.client_ranks=[4,8,16]"], r"adapter\.client_ranks: 3 ranks for federation\.num_clients=4"),
        (["adapter.client_ranks=[4,0,8,8]"], r"adapter\.client_ranks: client 1's rank 0 is below 1"),
        (["adapter.client_ranks=[4,4,8,32]"], r"adapter\.client_ranks: client 3's rank 32 exceeds adapter\.r \(16\)"),
        (
            ["adapter.client_ranks=[{rank: 4, clients: [0, 1]}, {rank: 8, clients: [1, 2, 3]}]"],
            r"adapter\.client_ranks: client 1 is in two tiers",
        ),
        (
            ["adapter.client_ranks=[{rank: 4, clients: [0, 1]}, {rank: 8, clients: [2]}]"],
            r"adapter\.client_ranks: clients \[3\] are in no tier",
        ),
        (
            ["adapter.client_ranks=[{rank: 4, clients: [0, 9]}, {rank: 8, clients: [1, 2, 3]}]"],
            r"adapter\.client_ranks: client 9 of tier rank 4 is not a client id \(0 \.\. 3\)",
        ),
        # registry: the strategy and the engine
        (
            [*SIX, RANKS],
            r"adapter\.client_ranks: federation\.strategy\.name=fedavg needs every client at adapter\.r \(16\), "
            r"got ranks \[4, 8, 16\]; use flexlora, flora, hetlora",
        ),
        ([*SIX, RANKS, "federation.strategy.name=hetlora", "adapter.freeze_a=true"], r"adapter\.freeze_a: not with"),
        (
            [*SIX, RANKS, "federation.strategy.name=flexlora", "engine.name=nvflare"],
            r"adapter\.client_ranks: in-process engine only",
        ),
        (["federation.strategy.name=flora", "adapter.freeze_a=true"], r"adapter\.freeze_a: not with .*flora"),
        (
            ["federation.strategy.name=flora", "model.quantization=4bit"],
            r"federation\.strategy\.name=flora: .* needs model\.quantization=none",
        ),
        (
            ["federation.strategy.name=hetlora", "finetune.strategy=connector"],
            r"federation\.strategy\.name=hetlora: aggregates LoRA factors, but finetune shares no lora unit",
        ),
        (["federation.strategy.name=hetlora", "federation.strategy.decay=1.5"], r"federation\.strategy\.decay: "),
        (
            [*SIX, RANKS, "federation.strategy.name=flexlora", "privacy.level=client", "privacy.noise_multiplier=1"],
            r"federation\.strategy\.name=flexlora: not with privacy\.level=client",
        ),
    ],
)
def test_bad_client_rank_configs_are_one_line_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=rf"^invalid config <defaults>: {fragment}"):
        load_run_config(None, overrides)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["federation.strategy.name=yoco"],
            r"federation\.strategy\.name=yoco: not with federation\.mode=rounds \(it runs in one_shot\); "
            r"federation\.mode=rounds takes fedadagrad, fedadam, fedavg, ",
        ),
        (
            ["federation.mode=one_shot", "federation.strategy.name=fedadam"],
            r"federation\.strategy\.name=fedadam: not with federation\.mode=one_shot \(it runs in rounds\); "
            r"federation\.mode=one_shot takes fedavg, fedprox, mean, ot_align, sign_conflict, yoco$",
        ),
        (
            ["federation.mode=one_shot", "privacy.level=client", "privacy.noise_multiplier=1.0"],
            r"federation\.mode=one_shot: not with privacy\.level=client: ",
        ),
        (
            ["federation.mode=one_shot", "eval.task=multitask"],
            r"federation\.mode=one_shot: not with eval\.task=multitask: ",
        ),
        (
            ["federation.mode=one_shot", "eval.task=t2i", "model.backend=janus"],
            r"federation\.mode=one_shot: not with eval\.task=t2i: ",
        ),
        (
            ["federation.mode=one_shot", "privacy.secure_aggregation.threshold=2"],
            r"federation\.mode=one_shot: not with privacy\.secure_aggregation: ",
        ),
    ],
)
def test_one_shot_mode_problems_are_one_line(overrides, fragment):
    with pytest.raises(ConfigError, match=rf"^invalid config <defaults>: {fragment}"):
        load_run_config(None, overrides)


def test_equal_ranks_at_adapter_r_run_with_any_strategy_and_tiers_resolve():
    config = load_run_config(None, ["adapter.r=8", "adapter.client_ranks=[8,8,8,8]"])
    assert config.adapter.rank_table(4) == {0: 8, 1: 8, 2: 8, 3: 8}
    tiers = load_run_config(
        None,
        [
            *SIX,
            "federation.strategy.name=hetlora",
            "adapter.client_ranks=[{rank: 4, clients: [0, 5]}, "
            "{rank: 8, clients: [1, 2]}, {rank: 16, clients: [3, 4]}]",
        ],
    )
    assert tiers.adapter.rank_table(6) == {0: 4, 5: 4, 1: 8, 2: 8, 3: 16, 4: 16}


@pytest.mark.parametrize("name", ["mean", "sign_conflict", "ot_align", "yoco", "fedavg"])
def test_one_shot_mode_takes_its_combiners(name):
    config = load_run_config(None, ["federation.mode=one_shot", f"federation.strategy.name={name}"])
    assert config.federation.rounds == 1 and config.federation.mode == "one_shot"


_MIXED = ["model.backend=janus", "eval.task=multitask", "data.synthetic.task_mix=0.5"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["adapter.per_task=true", "eval.task=multitask"], "adapter.per_task: backend hf_vlm trains no generation"),
        ([*_MIXED, "adapter.per_task=true", "federation.strategy.name=fedadam"], "use fedavg, fedprox"),
        ([*_MIXED, "adapter.per_task=true", "finetune.strategy=connector"], "adapter.per_task: not with finetune."),
        ([*_MIXED, "adapter.per_task=true", "adapter.freeze_a=true"], "adapter.per_task: not with adapter.freeze_a"),
        (
            [*_MIXED, "adapter.per_task=true", "privacy.level=client", "privacy.noise_multiplier=1"],
            "adapter.per_task: not with privacy.level",
        ),
        (
            [*_MIXED, "adapter.per_task=true", "federation.compression.codec=int8"],
            "adapter.per_task: not with federation.compression.codec",
        ),
        (["model.backend=janus", "adapter.per_task=true"], "adapter.per_task: set eval.task=multitask (got vqa)"),
        (["data.tasks=[[vqa],[t2x],[vqa],[vqa]]"], "data.tasks[1]: unknown task(s) ['t2x']"),
        (["data.tasks=[[vqa],[vqa]]"], "data.tasks: 2 lists for federation.num_clients=4"),
        (["data.tasks=[[vqa],[],[vqa],[vqa]]"], "data.tasks[1]: client 1 holds no task"),
        (["train.task_loss_weights={vqa: 0}"], "train.task_loss_weights.vqa: must be a finite number > 0"),
        (["train.task_loss_weights={vqa: -1}"], "train.task_loss_weights.vqa: must be a finite number > 0"),
        (["train.task_loss_weights={t3i: 1}"], "train.task_loss_weights: unknown task 't3i'"),
        (["data.synthetic.task=t2i", "data.synthetic.task_mix=0.5"], "data.synthetic.task_mix: mixes vqa and t2i"),
        (["data.synthetic.task_mix=1.5"], "data.synthetic.task_mix"),
    ],
)
def test_mixed_federation_problems_are_one_line_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_mixed_per_task_config_loads():
    config = load_run_config(
        None,
        [
            *_MIXED,
            "adapter.per_task=true",
            "data.tasks=[[vqa],[vqa],[t2i],[vqa,t2i]]",
            "train.task_loss_weights={t2i: 0.5}",
        ],
    )
    assert config.adapter.per_task and config.data.tasks[3] == ["vqa", "t2i"]
    assert config.train.loss_weight("t2i") == 0.5 and config.train.loss_weight("vqa") == 1.0
