import json

import pytest

from fedumm.compare import Spread, group_rows, groups_markdown, read_run, runs_csv, runs_markdown, write_comparison
from fedumm.errors import ConfigError


def _run_folder(root, name, curve, bytes_per_round=1000, seconds=2.0, epsilon=None, metric="vqa_accuracy"):
    """A finished run folder as run_job writes it: summary.json and one record per round."""
    folder = root / name
    folder.mkdir()
    (folder / "config.yaml").write_text("name: x\n")
    records = [{"phase": "federated", "round": 0, "global": {metric: curve[0]}}]
    for rnd, value in enumerate(curve[1:], start=1):
        records.append(
            {
                "phase": "federated",
                "round": rnd,
                "global": {metric: value},
                "bytes": {"total": bytes_per_round},
                "seconds": {"round": seconds},
            }
        )
    records.append({"phase": "centralized", "round": 0, "global": {metric: 0.0}})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"name": name, "metric": metric, "federated_final_accuracy": curve[-1]}
    if epsilon is not None:
        summary["privacy"] = {"epsilon": epsilon}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_a_run_row_reads_final_best_target_bytes_and_time(tmp_path):
    # Prepare: rounds 0..4 with the best value at round 3 and a dip after it.
    folder = _run_folder(tmp_path, "a", [0.1, 0.3, 0.45, 0.6, 0.5], bytes_per_round=2048, seconds=1.5, epsilon=3.2)

    # Execute
    row = read_run(folder, target=0.4)

    # Assert: the centralized record is not mixed in; round 0 never counts as best or reached.
    assert row.final == 0.5 and row.best == 0.6 and row.best_round == 3
    assert row.rounds_to_target == 2
    assert row.bytes == 4 * 2048 and row.seconds == pytest.approx(6.0)
    assert row.epsilon == 3.2 and len(row.curve) == 5


def test_an_unreached_target_is_none_and_shows_as_a_dash(tmp_path):
    row = read_run(_run_folder(tmp_path, "a", [0.1, 0.2, 0.3]), target=0.9)
    assert row.rounds_to_target is None
    table = runs_markdown([row], target=0.9)
    assert "| a | vqa_accuracy | 0.300 | 0.300 (2) | - | 2.0 | 4.0 | - |" in table


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda p: None, "is not a run folder (no summary.json)"),
        (lambda p: (p.mkdir(), (p / "config.yaml").write_text("x")), "has not finished (no summary.json)"),
        (lambda p: (p.mkdir(), (p / "summary.json").write_text("{nope")), "is not readable JSON"),
        (lambda p: (p.mkdir(), (p / "summary.json").write_text("[]")), "has no 'metric' key"),
        (
            lambda p: (p.mkdir(), (p / "summary.json").write_text('{"metric": "m", "federated_final_accuracy": 1}')),
            "has no round with global 'm'",
        ),
    ],
)
def test_bad_run_folders_are_one_line_errors_naming_the_folder(tmp_path, setup, fragment):
    folder = tmp_path / "bad"
    setup(folder)
    with pytest.raises(ConfigError, match="compare: .*bad") as info:
        read_run(folder)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_groups_give_mean_and_sample_std_over_seeds(tmp_path):
    # Prepare: two seeds of fedavg (final 0.4, 0.6) and one of fedprox (final 0.5).
    rows = [
        read_run(_run_folder(tmp_path, "f1", [0.0, 0.4]), 0.35, {"strategy": "fedavg", "seed": 1}),
        read_run(
            _run_folder(tmp_path, "f2", [0.0, 0.6], bytes_per_round=3000), 0.35, {"strategy": "fedavg", "seed": 2}
        ),
        read_run(_run_folder(tmp_path, "p1", [0.0, 0.5]), 0.35, {"strategy": "fedprox", "seed": 1}),
    ]

    # Execute
    groups = group_rows(rows, key=lambda r: {k: v for k, v in r.params.items() if k != "seed"})

    # Assert: mean 0.5, sample std sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414; one run has std 0.
    fedavg, fedprox = groups
    assert fedavg.runs == 2 and fedavg.final.mean == pytest.approx(0.5)
    assert fedavg.final.std == pytest.approx(0.141421, abs=1e-6)
    assert fedavg.bytes.mean == pytest.approx(2000) and fedavg.reached == 2
    assert fedprox.final == Spread(0.5, 0.0, 1)
    table = groups_markdown(groups, 0.35)
    assert "| fedavg | 2 | vqa_accuracy | 0.500 ± 0.141 |" in table
    assert "| fedprox | 1 | vqa_accuracy | 0.500 ± 0.000 |" in table


def test_groups_refuse_runs_reporting_different_metrics(tmp_path):
    rows = [
        read_run(_run_folder(tmp_path, "a", [0.0, 0.4]), params={"x": 1}),
        read_run(_run_folder(tmp_path, "b", [0.0, 0.4], metric="accuracy"), params={"x": 1}),
    ]
    with pytest.raises(ConfigError, match="different metrics"):
        group_rows(rows, key=lambda r: r.params)


def test_the_comparison_files_are_written(tmp_path):
    rows = [
        read_run(_run_folder(tmp_path, n, [0.0, v]), params={"seed": i})
        for i, (n, v) in enumerate([("a", 1), ("b", 0)])
    ]
    written = write_comparison(rows, tmp_path / "cmp")
    assert [p.name for p in written] == ["compare.md", "compare.csv", "compare.png"]
    csv_lines = runs_csv(rows).splitlines()
    assert csv_lines[0].split(",")[:3] == ["run", "metric", "final"] and csv_lines[0].endswith(",path,seed")
    assert csv_lines[1].startswith("a,vqa_accuracy,1.0,1.0,1,")
    assert written[2].stat().st_size > 1000  # a PNG with content


def test_rounds_without_evaluation_leave_the_curve_but_count_their_time(tmp_path):
    # Prepare: eval.every=2 over 3 rounds: round 1 has no global metrics.
    folder = _run_folder(tmp_path, "every", [0.0, 0.5, 0.25, 0.5], seconds=3.0)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    del records[1]["global"]
    records[1]["evaluated"] = False
    records[0]["seconds"] = {"round": 7.0}  # round 0's evaluation is not a round's time
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # Execute
    row = read_run(folder)
    # Assert
    assert row.curve == ((0, 0.0), (2, 0.25), (3, 0.5))
    assert row.seconds == 9.0 and row.best_round == 3
