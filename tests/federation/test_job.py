"""The job's resume and run-folder steps: which checkpoint a run continues, in place or into a new
folder, and finishing a run whose rounds are all done (the adapter from its checkpoint, no training)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from fedumm.errors import ConfigError
from fedumm.federation.job import open_run, read_resume
from fedumm.runlog import RunFolder
from fedumm.types import derive_seed
from fedumm.validation import load_run_config


def _done_run(tmp_path, rounds=2):
    """A run folder (no model needed) whose checkpoint is at its last round."""
    config = load_run_config(None, [f"output.dir={tmp_path}", "output.name=done", f"federation.rounds={rounds}"])
    run = RunFolder.create(config)
    for round_num in range(rounds + 1):
        run.append_metrics({"phase": "federated", "round": round_num, "global": {"vqa_accuracy": 0.1 * round_num}})
    run.append_metrics({"phase": "centralized", "round": 0, "global": {}})
    run.save_checkpoint(rounds, {"w": torch.ones(2)}, {}, strategy="fedavg", num_clients=4)
    return run


def test_in_place_a_finished_run_may_be_finished(tmp_path):
    run = _done_run(tmp_path)
    config = load_run_config(run.path / "config.yaml", [f"federation.resume_from={run.path}"])
    # Execute
    resume, in_place = read_resume(config)
    folder, prior = open_run(config, resume, in_place)
    # Assert: the checkpoint is taken as it is; the federated records stay, the centralized phase goes.
    assert in_place and resume.finish_allowed and resume.round == 2
    assert folder.path == run.path and [r["round"] for r in prior] == [0, 1, 2]
    assert [r["phase"] for r in folder.read_metrics()] == ["federated"] * 3


def test_from_a_new_folder_a_finished_run_has_nothing_left(tmp_path):
    run = _done_run(tmp_path)
    config = load_run_config(run.path / "config.yaml", [f"federation.resume_from={run.path}", "output.name=branch"])
    with pytest.raises(ConfigError, match=r"is at round 2 and federation.rounds is 2: nothing left to run"):
        read_resume(config)
    assert not (tmp_path / "branch").exists()


def test_a_new_folder_starts_with_the_earlier_records(tmp_path):
    run = _done_run(tmp_path)
    config = load_run_config(
        run.path / "config.yaml", [f"federation.resume_from={run.path}", "output.name=branch", "federation.rounds=4"]
    )
    resume, in_place = read_resume(config)
    folder, prior = open_run(config, resume, in_place)
    assert not in_place and not resume.finish_allowed
    assert folder.path == tmp_path / "branch" and [r["round"] for r in folder.read_metrics()] == [0, 1, 2]
    assert prior == folder.read_metrics()
    assert [r["round"] for r in RunFolder(run.path).read_metrics()] == [0, 1, 2, 0]  # the earlier run is untouched


@pytest.mark.slow
def test_resume_finishes_a_run_killed_before_its_adapter(tmp_path, tiny_llava_path):
    from fedumm.cli import main

    # Prepare: a finished 2-round run, then as if killed after its last checkpoint, in mid-adapter.
    args = [
        f"model.name_or_path={tiny_llava_path}",
        "model.device=cpu",
        "model.max_new_tokens=2",
        "federation.num_clients=2",
        "federation.rounds=2",
        "federation.strategy.name=scaffold",
        "data.synthetic.train_samples=24",
        "data.synthetic.test_samples=4",
        "data.partition.min_samples=4",
        "train.batch_size=4",
        "train.local_steps=1",
        "eval.clients=false",
        "eval.centralized_baseline=false",
        "output.progress=false",
        f"output.dir={tmp_path}",
        "output.name=run",
    ]
    assert main(["run", *[a for item in args for a in ("--set", item)]]) == 0
    run = tmp_path / "run"
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    checkpoint = (run / "checkpoints" / "last.safetensors").read_bytes()
    (run / "adapter").rename(run / ".adapter.tmp")
    for name in ("summary.json", "summary.txt", "accuracy.png"):
        (run / name).unlink()
    # Execute
    assert main(["run", "--resume", str(run)]) == 0
    # Assert: the same adapter, written from the checkpoint; no round ran again; no temporary left.
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert (run / "metrics.jsonl").read_text() == metrics
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == checkpoint
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"]["round"] == 2 and summary["rounds"] == 2
    assert (run / "accuracy.png").is_file() and (run / "summary.txt").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_the_centralized_baseline_of_a_mixed_federation_pools_every_task():
    from fedumm.federation.job import centralized_config

    config = load_run_config(
        None,
        [
            "model.backend=janus",
            "eval.task=multitask",
            "data.synthetic.task_mix=0.5",
            "data.tasks=[[vqa],[vqa],[t2i],[vqa,t2i]]",
            "train.local_steps=3",
        ],
    )
    central = centralized_config(config)
    assert central.data.tasks is None and central.federation.num_clients == 1
    assert central.train.local_steps == 12  # 3 steps x 4 clients a round
    assert config.data.tasks == [["vqa"], ["vqa"], ["t2i"], ["vqa", "t2i"]]  # the run's own config is untouched


def _t2i(overall: float, colors: float, **extra: float) -> dict:
    return {
        "task": "t2i",
        "n": 8,
        "geneval_overall": overall,
        "geneval_colors": colors,
        "geneval_images": 0.5,
        "geneval_checked": 8,
        **extra,
    }


def test_t2i_summary_pairs_untrained_and_final_per_category_with_the_ceiling() -> None:
    from fedumm.federation.job import t2i_summary

    initial = _t2i(0.1, 0.0, image_token_accuracy=0.01, image_token_nll=6.0, vq_ceiling=0.9, vq_ceiling_colors=0.9)
    final = _t2i(0.6, 0.75, image_token_accuracy=0.4, image_token_nll=2.5, vq_ceiling=0.9, vq_ceiling_colors=0.9)
    # Single task, and the same numbers as the t2i part of a multitask run.
    single = t2i_summary(initial, final)
    multi = t2i_summary(*({"task": "multitask", "by_task": {"t2i": part}} for part in (initial, final)))
    assert (
        single
        == multi
        == {
            "images": 8,
            "geneval_checked": 8,
            "geneval_overall": {"initial": 0.1, "final": 0.6},
            "by_category": {"colors": {"initial": 0.0, "final": 0.75}},
            "vq_ceiling": 0.9,
            "vq_ceiling_by_category": {"colors": 0.9},
            "image_token_accuracy": {"initial": 0.01, "final": 0.4},
            "image_token_nll": {"initial": 6.0, "final": 2.5},
        }
    )
    assert t2i_summary({"task": "vqa", "vqa_accuracy": 0.1}, {"task": "vqa", "vqa_accuracy": 0.2}) == {}


def test_t2i_summary_of_rows_the_checker_cannot_score_keeps_the_other_metrics() -> None:
    from fedumm.federation.job import t2i_summary
    from fedumm.report import t2i_lines

    # Prepare: 6 images, 2 of them checked (geneval 0.5), image-token accuracy 0.1 -> 0.3; then none checked.
    initial = {"task": "t2i", "n": 6, "geneval_checked": 2, "geneval_overall": 0.0, "image_token_accuracy": 0.1}
    final = {"task": "t2i", "n": 6, "geneval_checked": 2, "geneval_overall": 0.5, "image_token_accuracy": 0.3}
    unchecked = {"task": "t2i", "n": 6, "geneval_checked": 0, "image_token_accuracy": 0.3, "clip_score": 21.5}
    # Execute
    some, none = t2i_summary(initial, final), t2i_summary(initial, unchecked)
    # Assert: the score pairs exist only where rows were checked; the report says how many were.
    assert some["geneval_overall"] == {"initial": 0.0, "final": 0.5} and some["by_category"] == {}
    assert (some["images"], some["geneval_checked"]) == (6, 2)
    assert none == {
        "images": 6,
        "geneval_checked": 0,
        "image_token_accuracy": {"initial": 0.1, "final": 0.3},
        "clip_score": {"initial": None, "final": 21.5},
    }
    lines = t2i_lines(none)
    assert lines[0].startswith("  GenEval checker: 0 of 6 images checked")
    assert lines[1:] == ["  teacher-forced image tokens: top-1 accuracy 10.0% -> 30.0%", "  CLIPScore: 21.50"]


def _prompt_file(tmp_path):
    """GenEval's prompt file with three prompts (one naming a COCO class) and a blank line."""
    lines = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
        {
            "tag": "counting",
            "include": [{"class": "square", "count": 2}],
            "exclude": [{"class": "square", "count": 3}],
            "prompt": "a photo of two squares",
        },
    ]
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[1:]) + "\n")
    return path, lines


def test_official_prompts_are_read_before_the_rounds_and_a_bad_file_names_the_key(tmp_path):
    from fedumm.errors import DataError
    from fedumm.federation.job import official_prompts

    path, lines = _prompt_file(tmp_path)
    config = load_run_config(None, ["model.backend=janus", f"eval.geneval_prompts={path}"])
    # Execute
    rows = official_prompts(config)
    # Assert: one row per prompt, numbered as GenEval numbers its folders; no file, no rows.
    assert [r["prompt"] for r in rows] == [x["prompt"] for x in lines]
    assert [r["metadata"]["prompt_index"] for r in rows] == [0, 1, 2]
    assert official_prompts(load_run_config(None, [])) == []
    missing = config.model_copy(update={"eval": config.eval.model_copy(update={"geneval_prompts": "nope.jsonl"})})
    with pytest.raises(DataError, match=r"^eval.geneval_prompts: nope.jsonl: file not found"):
        official_prompts(missing)
    path.write_text('{"prompt": "x", "tag": "colors", "include": [{"class": "dog"}]}\n')
    with pytest.raises(DataError, match=r"^eval.geneval_prompts: .*line 1"):
        official_prompts(config)


def test_the_global_test_rows_must_give_the_t2i_metric(tmp_path):
    from types import SimpleNamespace

    from fedumm.data.synthetic import COLORS, make_synthetic_t2i
    from fedumm.errors import DataError
    from fedumm.federation.job import check_t2i_rows

    config = load_run_config(None, ["model.backend=janus", "eval.task=t2i"])
    host = SimpleNamespace(evaluation=config.eval.evaluation(), palette=COLORS)
    synthetic = make_synthetic_t2i(2, seed=0)
    user = [{"prompt": "a lighthouse", "image": synthetic[0]["image"]}, {"prompt": "a boat", "image": None}]
    # Execute / Assert: one checkable row is enough; user rows only are refused in one line.
    check_t2i_rows(config, host, [*user, synthetic[0]])
    with pytest.raises(DataError, match=r"^eval.t2i_metric: geneval_overall, but none of the 2 text-to-image global "):
        check_t2i_rows(config, host, user)
    tokens = load_run_config(None, ["model.backend=janus", "eval.task=t2i", "eval.t2i_metric=image_token_accuracy"])
    check_t2i_rows(tokens, SimpleNamespace(evaluation=tokens.eval.evaluation(), palette=COLORS), user)


def test_draw_official_writes_geneval_samples_per_prompt_in_its_layout(tmp_path):
    from types import SimpleNamespace

    from fedumm.data.geneval import read_geneval_layout
    from fedumm.federation import ModelHost
    from fedumm.federation.job import draw_official, official_prompts

    path, lines = _prompt_file(tmp_path)
    config = load_run_config(
        None,
        [
            "model.backend=janus",
            "model.device=cpu",
            "eval.task=t2i",
            f"eval.geneval_prompts={path}",
            "eval.geneval_samples=2",
            "eval.batch_size=2",
            "eval.image_temperature=1",
        ],
    )
    host = ModelHost(config)
    prompts = official_prompts(config)
    # Execute
    out = draw_official(config, host, SimpleNamespace(path=tmp_path / "run"), prompts)
    # Assert: GenEval's layout, 2 samples for each of the 3 prompts, each prompt's own metadata line;
    # sample k of the batch at 0 is the host's image for seed (run seed, 0, stream 8, k).
    folder = tmp_path / "run" / "geneval" / "official"
    found = read_geneval_layout(folder)
    assert [f.index for f in found] == [0, 1, 2] and [f.metadata for f in found] == lines
    assert [[p.name for p in f.samples] for f in found] == [["0000.png", "0001.png"]] * 3
    expected = host.generate_images([x["prompt"] for x in lines[:2]], derive_seed(config.seed, 0, 8, 1))
    assert Image.open(found[1].samples[1]).convert("RGB").tobytes() == expected[1].tobytes()
    assert Image.open(found[0].samples[0]).tobytes() != Image.open(found[0].samples[1]).tobytes()
    assert (out["folder"], out["prompts"], out["samples"]) == (str(folder), 3, 2)
    assert out["command"].startswith(f"python evaluation/evaluate_images.py {folder} --outfile ")
