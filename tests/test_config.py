from pathlib import Path

import pytest

from fedumm.config import RunConfig, apply_overrides, save_config
from fedumm.errors import ConfigError
from fedumm.validation import load_run_config

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_yaml_equals_builtin_defaults():
    # Prepare / Execute
    from_file = load_run_config(REPO / "configs" / "quickstart.yaml")
    # Assert: `fedumm run` without a file and with the quickstart file run the same job
    assert from_file == RunConfig()
    assert from_file.federation.num_clients == 4
    assert from_file.data.partition.alpha == 0.5
    assert (from_file.adapter.r, from_file.adapter.alpha) == (16, 32)
    assert from_file.train.weight_decay == 0.05


def test_overrides_parse_yaml_types():
    config = load_run_config(
        None,
        [
            "federation.rounds=3",
            "train.lr=1e-4",
            "eval.clients=false",
            "adapter.target_modules=.*q_proj",
            "train.local_steps=null",
        ],
    )
    assert config.federation.rounds == 3
    assert config.train.lr == pytest.approx(1e-4)
    assert config.eval.clients is False
    assert config.adapter.target_modules == ".*q_proj"
    assert config.train.local_steps is None


@pytest.mark.parametrize(
    ("overrides", "expected_fragments"),
    [
        (["federation.num_clint=3"], ["federation.num_clint", "unknown key"]),
        (["trian.lr=0.1"], ["trian", "unknown key"]),
        (["train.lr=-1"], ["train.lr", "greater than 0", "-1"]),
        (["train.batch_size=many"], ["train.batch_size", "integer", "'many'"]),
        (["data.partition.alpha=-0.5"], ["data.partition.alpha", "greater than or equal to 0"]),
        (["federation.fraction_fit=1.5"], ["federation.fraction_fit", "less than or equal to 1"]),
        (["train.precision=fp8"], ["train.precision", "'fp32'", "'bf16'"]),
        (["model.backend=nope"], ["model.backend", "'nope'", "hf_vlm"]),
        (["model.device=tpu"], ["model.device", "cuda:N"]),
        (["federation.min_fit_clients=9"], ["min_fit_clients", "exceeds", "num_clients (4)"]),
    ],
)
def test_bad_values_fail_naming_the_key(overrides, expected_fragments):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    message = str(info.value)
    for fragment in expected_fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("federation", "expected key.sub=value"),
        ("=3", "expected key.sub=value"),
        ("train.lr=[1,", "not valid YAML"),
        ("train.lr.x=1", "train.lr is a value"),
    ],
)
def test_malformed_overrides(override, fragment):
    data = {"train": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        if override.startswith("train.lr.x"):
            apply_overrides(data, [override])
        else:
            load_run_config(None, [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_run_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(broken)


def test_saved_config_round_trips(tmp_path):
    config = load_run_config(None, ["federation.rounds=7", "name=x"])
    save_config(config, tmp_path / "config.yaml")
    assert load_run_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["federation.strategy.name=fedprox", "federation.strategy.mu=-1"],
            "federation.strategy.mu: Input should be greater than or equal to 0",
        ),
        (["federation.strategy.mu=1"], "federation.strategy.mu: unknown key for this strategy"),
        (
            ["federation.strategy.name=fedsgd"],
            "federation.strategy.name: unknown strategy 'fedsgd'; available: .*fedavg",
        ),
    ],
)
def test_strategy_params_are_validated_per_strategy(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_run_config(None, overrides)


def test_strategy_params_survive_the_saved_config(tmp_path):
    config = load_run_config(None, ["federation.strategy.name=fedprox", "federation.strategy.mu=0.2"])
    save_config(config, tmp_path / "c.yaml")
    assert load_run_config(tmp_path / "c.yaml").federation.strategy.params() == {"mu": 0.2}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # n = ceil(0.5 * 4) = 2 clients a round: Krum's smallest f = 0 still needs n > 2.
        (
            ["federation.fraction_fit=0.5"],
            r"federation.strategy.f: Krum with f = 0 needs more than 2f \+ 2 = 2 "
            r"clients per round, got 2;.*fraction_fit = 0.5",
        ),
        (
            ["federation.strategy.f=1"],
            r"federation.strategy.f: Krum with f = 1 needs more than 2f \+ 2 = 4 "
            r"clients per round, got 4",
        ),
        (
            ["federation.strategy.f=0", "federation.strategy.m=5"],
            r"federation.strategy.m: multi-Krum selects m = 5 of "
            r"n - f = 4",
        ),
    ],
)
def test_krum_round_size_is_checked_before_anything_loads(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_run_config(None, ["federation.strategy.name=krum", *overrides])


def test_krum_config_that_fits_the_round_size_loads():
    config = load_run_config(
        None,
        [
            "federation.strategy.name=krum",
            "federation.num_clients=10",
            "federation.fraction_fit=0.5",
            "federation.strategy.f=1",
        ],
    )
    assert config.federation.clients_per_round() == 5  # 5 > 2 * 1 + 2


def test_sgd_optimizer_and_momentum():
    config = load_run_config(None, ["train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.1"])
    assert (config.train.optimizer, config.train.momentum) == ("sgd", 0.9)
    assert load_run_config(None).train.optimizer == "adamw"
    with pytest.raises(ConfigError, match="train.momentum: only used with train.optimizer=sgd"):
        load_run_config(None, ["train.momentum=0.9"])
    with pytest.raises(ConfigError, match="train.optimizer: must be one of 'adamw' or 'sgd'"):
        load_run_config(None, ["train.optimizer=lion"])


def test_resume_from_is_a_path_and_not_yet_for_nvflare():
    assert load_run_config(None).federation.resume_from is None
    assert load_run_config(None, ["federation.resume_from=runs/x"]).federation.resume_from == "runs/x"
    with pytest.raises(ConfigError, match="federation.resume_from: not supported with engine.name=nvflare"):
        load_run_config(None, ["federation.resume_from=runs/x", "engine.name=nvflare"])


# ---------------------------------------------------------------- hostile or broken input


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("train: &t {lr: 0.1}\neval: {batch_size: 4}\n", 1),
        ("a: &x [1, 2]\nb: [*x, *x]\n", 1),
        ("train:\n  lr: 0.1\nfederation:\n  rounds: *r\n", 4),
    ],
)
def test_yaml_anchors_and_aliases_are_refused(tmp_path, text, line):
    path = tmp_path / "laughs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value) == (
        f"config file {path}: YAML anchors and aliases (&name, *name) are not accepted (line {line}); "
        "write the values out"
    )


def test_a_billion_laughs_file_is_refused_before_it_expands(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="anchors and aliases .* are not accepted"):
        load_run_config(path)


def test_a_config_file_over_the_size_limit_is_refused(tmp_path):
    from fedumm.config import MAX_CONFIG_BYTES

    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\nname: huge\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value) == (f"config file {path} is {path.stat().st_size:,} bytes, over the 1 MiB limit of a config")


def test_a_set_value_over_the_size_limit_is_refused_and_cut():
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["name=" + "n" * (70 << 10)])
    message = str(info.value)
    assert message.startswith("--set 'name=nnn") and message.endswith(
        "…': longer than 64 KiB; put large values in a config file"
    )
    assert len(message) < 300


def test_an_alias_in_a_set_value_is_refused():
    with pytest.raises(
        ConfigError, match=r"^--set 'seed=\*a': YAML anchors and aliases \(&name, \*name\) are not accepted$"
    ):
        load_run_config(None, ["seed=*a"])


def test_validation_errors_cut_long_values_and_keys():
    # Prepare: a 50,000-character value where a short literal is expected, and a long unknown key.
    value, key = "p" * 50_000, "k" * 5_000
    # Execute
    with pytest.raises(ConfigError) as info:
        load_run_config(None, [f"train.precision={value}", f"train.{key}=1"])
    # Assert: both named, each cut at 200 characters with "…".
    message = str(info.value)
    assert f"train.precision: must be one of 'fp32', 'bf16' or 'fp16' (got '{'p' * 199}…)" in message
    assert f"{('train.' + key)[:200]}…: unknown key" in message
    assert len(message) < 700


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["adapter.alpha=.inf"], "adapter.alpha: must be a finite number (got inf)"),
        (["train.lr=.nan"], "train.lr: must be a finite number (got nan)"),
        (["data.partition.alpha=-.inf"], "data.partition.alpha: must be a finite number (got -inf)"),
        (
            ["federation.strategy.name=scaffold", "federation.strategy.server_lr=.inf"],
            "federation.strategy.server_lr: Input should be a finite number",
        ),
        (
            ["federation.strategy.name=fedadam", "federation.strategy.eta=.nan"],
            "federation.strategy.eta: Input should be a finite number",
        ),
        (["seed=1e23"], "seed: Input should be a valid integer, unable to parse string as an integer (got '1e23')"),
        (["seed=1.0e+23"], "seed: Unable to parse input string as an integer, exceeded maximum size (got 1e+23)"),
    ],
)
def test_non_finite_and_oversized_numbers_are_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message and message == f"invalid config <defaults>: {expected}"


@pytest.mark.parametrize("name", ["..", ".", "", "  ", "a/b", "a\\b", "/etc"])
def test_output_name_is_one_path_component(name):
    import json

    with pytest.raises(ConfigError) as info:
        load_run_config(None, [f"output.name={json.dumps(name)}"])
    assert str(info.value) == (
        "invalid config <defaults>: output.name: must be a single folder name under output.dir "
        f"(not empty, '.' or '..'; no '/' or '\\') (got {name!r})"
    )
    assert load_run_config(None, ["output.name=run.2"]).output.name == "run.2"


def test_one_shot_mode_defaults_to_its_one_round():
    config = load_run_config(None, ["federation.mode=one_shot"])
    assert config.federation.rounds == 1
    assert load_run_config(None, []).federation.mode == "rounds"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["federation.mode=one_shot", "federation.rounds=12"],
            "federation.rounds: mode one_shot trains and uploads once: set federation.rounds=1 (got 12)",
        ),
        (
            ["federation.mode=one_shot", "federation.fraction_fit=0.5"],
            "federation.fraction_fit: mode one_shot trains every client once: set federation.fraction_fit=1 "
            "(got 0.5: 2 of 4 clients)",
        ),
        (["federation.mode=twice"], "federation.mode"),
    ],
)
def test_bad_one_shot_settings_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value).strip()


def test_quickstart_with_one_shot_names_its_rounds():
    quickstart = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError, match=r"set federation\.rounds=1 \(got 12\)"):
        load_run_config(quickstart, ["federation.mode=one_shot"])
    assert load_run_config(quickstart, ["federation.mode=one_shot", "federation.rounds=1"]).federation.rounds == 1


def test_eval_multitask_keys() -> None:
    # Prepare / Execute
    config = load_run_config(
        None, ["eval.task=multitask", "eval.task_weights={vqa: 1, grounding: 2}", "eval.box_format=pixel"]
    )
    evaluation = config.eval.evaluation()

    # Assert
    assert (evaluation.primary_metric, dict(evaluation.weights)) == ("multitask_score", {"vqa": 1.0, "grounding": 2.0})
    assert evaluation.options.box_format == "pixel"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("eval.task_weights={vqa: 1}", "eval.task_weights: only with eval.task: multitask"),
        ("eval.box_format=xyxy", "box_format"),
        ("eval.task=multi", "'multitask'"),
    ],
)
def test_eval_multitask_keys_refused(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_run_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["federation.compression.codec=int2"], "federation.compression.codec: must be one of 'none', 'int8'"),
        (
            ["federation.compression.error_feedback=true"],
            "federation.compression.error_feedback: needs a codec (federation.compression.codec is none)",
        ),
        (
            ["federation.compression.codec=int8", "federation.compression.topk_fraction=0.2"],
            "federation.compression.topk_fraction: only used with codec topk (codec is int8)",
        ),
        (
            ["federation.compression.codec=topk", "federation.compression.topk_fraction=0"],
            "federation.compression.topk_fraction: Input should be greater than 0",
        ),
        (
            ["federation.compression.codec=topk", "federation.compression.topk_fraction=1.5"],
            "federation.compression.topk_fraction: Input should be less than or equal to 1",
        ),
        (
            ["federation.compression.codec=int4", "privacy.secure_aggregation.threshold=2"],
            "federation.compression.codec=int4: not with privacy.secure_aggregation",
        ),
    ],
)
def test_bad_compression_settings_fail_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert fragment in str(info.value)


def test_compression_composes_with_wire_dtype_and_dp():
    config = load_run_config(
        None,
        [
            "federation.compression.codec=topk",
            "federation.compression.topk_fraction=0.01",
            "federation.compression.error_feedback=true",
            "federation.wire_dtype=bfloat16",
            "privacy.level=client",
            "privacy.mechanism=local",
            "privacy.noise_multiplier=0.5",
        ],
    )
    assert config.federation.compression.topk_fraction == 0.01
    assert load_run_config(None, []).federation.compression.codec == "none"


def test_compression_with_client_ranks_is_refused():
    with pytest.raises(ConfigError, match=r"federation.compression.codec=int8: not with adapter.client_ranks"):
        load_run_config(None, ["federation.compression.codec=int8", "adapter.client_ranks=[4, 8, 16, 16]"])


def test_t2i_quickstart_is_tiny_janus_on_synthetic_t2i_split_by_colour() -> None:
    config = load_run_config(REPO / "configs" / "t2i_quickstart.yaml")
    assert (config.model.backend, config.model.name_or_path, config.eval.task) == ("janus", None, "t2i")
    assert (config.data.source, config.data.synthetic.task) == ("synthetic", "t2i")
    assert (config.data.partition.method, config.data.partition.label_column) == ("dirichlet", "color")
    assert (config.federation.num_clients, config.federation.strategy.name) == (4, "fedavg")
    assert config.eval.centralized_baseline
    # The encoder-free variant the config's comment gives passes the same checks.
    emu3 = ["model.backend=emu3", "finetune.strategy=lora", "finetune.groups={}", "data.synthetic.image_size=64"]
    assert load_run_config(REPO / "configs" / "t2i_quickstart.yaml", emu3).model.backend == "emu3"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["eval.t2i_metric=clip_score"], r"eval\.t2i_metric: clip_score is for text-to-image runs; eval\.task "),
        (
            ["model.backend=janus", "eval.task=t2i", "eval.t2i_metric=clip_score"],
            r"eval\.t2i_metric: clip_score needs eval\.clip_model",
        ),
        (["eval.task=t2i", "model.backend=janus", "eval.t2i_metric=fid"], r"eval\.t2i_metric: "),
        (["eval.geneval_samples=2"], r"eval\.geneval_samples: only with eval\.geneval_prompts"),
        (["model.backend=janus", "eval.geneval_prompts=p.jsonl", "eval.geneval_samples=0"], r"eval\.geneval_samples"),
        (["eval.geneval_prompts=p.jsonl"], r"eval\.geneval_prompts: drawing images for GenEval needs a backend that "),
    ],
)
def test_t2i_eval_keys_refused(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_run_config(None, overrides)


def test_t2i_eval_keys_accepted() -> None:
    config = load_run_config(
        None,
        [
            "model.backend=janus",
            "eval.task=t2i",
            "eval.t2i_metric=image_token_accuracy",
            "eval.geneval_prompts=p.jsonl",
            "eval.geneval_samples=2",
        ],
    )
    assert config.eval.evaluation().primary_metric == "image_token_accuracy"
    assert (config.eval.geneval_prompts, config.eval.geneval_samples) == ("p.jsonl", 2)
    assert load_run_config(None, []).eval.geneval_samples == 4
