import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedumm.cli import main
from fedumm.report_html import REPORT_FILE, render_report, write_report


def _records():
    base = {"bytes": {"upload": {"0": 1024, "1": 1024}, "download": {"0": 2048, "1": 2048}, "total": 6144}}
    return [
        {"phase": "federated", "round": 0, "global": {"vqa_accuracy": 0.1}},
        {
            "phase": "federated",
            "round": 1,
            "clients": [0, 1],
            "global": {"vqa_accuracy": 0.3, "by_answer_type": {"color": {"n": 4, "vqa_accuracy": 0.25}}},
            "client_metrics": {"0": {"local_vqa_accuracy": 0.25, "train_loss": 2.0}, "1": {"train_loss": 1.0}},
            **base,
            "rejected": {"1": "update norm 9.1 above the bound 3.0"},
            "privacy": {"epsilon": 1.25},
            "seconds": {"fit": 1.0, "eval": 0.5, "round": 1.5},
        },
        {
            "phase": "federated",
            "round": 2,
            "clients": [0, 1],
            "global": {"vqa_accuracy": 0.4, "by_answer_type": {"color": {"n": 4, "vqa_accuracy": 0.5}}},
            "client_metrics": {"0": {"local_vqa_accuracy": 0.5}},
            **base,
            "missing": [1],
            "privacy": {"epsilon": 2.5},
            "seconds": {"fit": 1.0, "eval": 0.5, "round": 1.5},
        },
        {"phase": "centralized", "round": 0, "global": {"vqa_accuracy": 0.1}},
        {"phase": "centralized", "round": 1, "global": {"vqa_accuracy": 0.45}, "seconds": {"round": 2.0}},
    ]


@pytest.fixture
def run_folder(tmp_path):
    folder = tmp_path / "myrun"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    summary = {
        "name": "myrun",
        "task": "vqa",
        "metric": "vqa_accuracy",
        "federated_final_accuracy": 0.4,
        "federated_initial_accuracy": 0.1,
        "centralized_final_accuracy": 0.45,
        "majority_answer": "yes",
        "majority_baseline_accuracy": 0.2,
        "trainable_parameters": 12288,
        "bytes_per_round": 6144,
        "privacy": {"epsilon": 2.5},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(
        "seed: 7\nmodel: {backend: hf_vlm, name_or_path: tiny-llava}\n"
        "federation: {num_clients: 2, rounds: 2, fraction_fit: 1.0, strategy: {name: fedprox, mu: 0.01}}\n"
        "privacy: {level: client, mechanism: central, noise_multiplier: 1.1, clip_norm: 1.0}\n"
    )
    (folder / "partition.json").write_text(json.dumps({"sizes": [30, 50]}))
    return folder


def test_the_report_holds_every_section_and_nothing_from_outside(run_folder):
    # Execute
    page = render_report(run_folder)

    # Assert: the numbers and names of each section are on the page...
    for text in (
        "fedumm run myrun",
        "fedprox {&quot;mu&quot;: 0.01}",  # the strategy and its params
        "tiny-llava",
        "client (central), z 1.1",
        "majority answer (yes)",
        "12,288",
        "local_vqa_accuracy per client and round",
        "<td class=k>color</td><td>4</td><td>0.500</td>",  # the breakdown of the last round with one
        "update norm 9.1 above the bound 3.0",
        "no reply",
        "Privacy budget",
        "<td class=k>1</td><td>50</td>",  # partition sizes
        "<td>6.000</td><td>12.000</td>",  # KiB this round and cumulative at round 2
    ):
        assert text in page, text
    # ...and the page is self-contained: inline images, no script, no stylesheet or image from elsewhere.
    assert page.count('src="data:image/png;base64,') == 3  # metric, communication, privacy
    for foreign in ("<script", "<link", 'src="http', "url(http"):
        assert foreign not in page


def test_a_folder_without_a_summary_is_one_error_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no summary.json" in err[0]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_a_real_run_writes_a_report_that_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (.ci/run installs the Debian package chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    # Prepare: a real two-round run of the tiny default.
    code = main(
        [
            "run",
            "--set", f"output.dir={tmp_path}",
            "--set", "name=rendered",
            "--set", "model.device=cpu",
            "--set", "federation.num_clients=2",
            "--set", "federation.rounds=2",
            "--set", "data.synthetic.train_samples=40",
            "--set", "data.synthetic.test_samples=8",
            "--set", "data.partition.min_samples=4",
            "--set", "train.batch_size=4",
            "--set", "train.local_steps=1",
            "--set", "output.progress=false",
        ]
    )  # fmt: skip
    assert code == 0
    page = tmp_path / "rendered" / REPORT_FILE
    assert page.is_file()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip

    # Execute: the browser's DOM after loading the file, and a screenshot of it.
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
    )

    # Assert: the browser parsed the page (its text is there) and painted more than a blank page.
    assert "fedumm run rendered" in dom and "Global vqa_accuracy per round" in dom and "Communication" in dom
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and charts, not one flat colour


def test_the_report_command_writes_the_file_again(run_folder, capsys):
    (run_folder / REPORT_FILE).unlink(missing_ok=True)
    assert main(["report", str(run_folder)]) == 0
    assert (run_folder / REPORT_FILE).read_text() == render_report(run_folder)
    assert write_report(run_folder) == Path(run_folder) / REPORT_FILE


def test_the_task_breakdown_shows_each_tasks_own_primary_metric(run_folder):
    # Prepare: a multitask last round where caption's first metric is BLEU-4, not its primary CIDEr-D.
    records = _records()
    records[2]["global"]["by_task"] = {
        "caption": {"n": 3, "bleu_4": 0.11, "cider_d": 1.25},
        "vqa": {"n": 5, "vqa_accuracy": 0.6},
    }
    (run_folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    # Execute
    page = render_report(run_folder)

    # Assert
    assert "<td class=k>caption</td><td>3</td><td>cider_d</td><td>1.250</td>" in page
    assert "<td class=k>vqa</td><td>5</td><td>vqa_accuracy</td><td>0.600</td>" in page


def test_rounds_without_evaluation_and_the_time_split_are_shown(run_folder):
    # Prepare: round 1 was not evaluated (eval.every) and records the time split.
    records = _records()
    del records[1]["global"]
    records[1]["evaluated"] = False
    split = {"train": 0.75, "client_eval": 0.125, "global_eval": 0.0, "serialise": 0.0625, "aggregate": 0.03125}
    records[1]["seconds"] = {**split, "other": 0.03125, "round": 1.0}
    (run_folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # Execute
    page = render_report(run_folder)
    # Assert: the timing table has the split's columns and round 1's values.
    assert "train s" in page and "global_eval s" in page and "serialise s" in page
    assert "<td>0.750</td><td>0.125</td><td>0.000</td><td>0.062</td><td>0.031</td><td>0.031</td><td>1.000</td>" in page
