"""Source ``medalpaca``: a stand-in of Medical Meadow's flashcards file (text-only rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedumm.cli import main
from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.modality import TEXT_ONLY
from fedumm.data.sources.medalpaca import load_medalpaca
from fedumm.errors import DataError

INSTRUCTION = "Answer this question truthfully"


def write_flashcards(path: Path, n: int) -> Path:
    """medical_meadow_wikidoc_medical_flashcards.json: n records {instruction, input, output}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {"instruction": INSTRUCTION, "input": f"What is sign {k}?", "output": f"Sign {k} is a finding."}
        for k in range(n)
    ]
    path.write_text(json.dumps(records, indent=4))
    return path


def test_medalpaca_rows_are_text_only(tmp_path: Path) -> None:
    # Prepare
    path = write_flashcards(tmp_path / "medical_meadow_wikidoc_medical_flashcards.json", 3)
    # Execute
    rows = load_medalpaca(path).rows
    with_instruction = load_medalpaca(path, with_instruction=True).rows
    # Assert: question = input (FedMLLM), answer = output, no image.
    assert [r["question"] for r in rows] == ["What is sign 0?", "What is sign 1?", "What is sign 2?"]
    assert (
        rows[1]["answers"] == ["Sign 1 is a finding."] and rows[1]["multiple_choice_answer"] == "Sign 1 is a finding."
    )
    assert all(r["image"] is None for r in rows) and rows[0]["task"] == "caption" and rows[2]["metadata"]["row"] == 3
    assert with_instruction[0]["question"] == f"{INSTRUCTION}\nWhat is sign 0?"


def test_medalpaca_source_holds_out_a_test_set_and_stays_text_only(tmp_path: Path) -> None:
    # Prepare: 40 records, no test file: data.global_test_fraction (0.25) is held out.
    path = write_flashcards(tmp_path / "cards.json", 40)
    config = DataConfig.model_validate(
        {
            "source": "medalpaca",
            "medalpaca": {"path": str(path)},
            "global_test_fraction": 0.25,
            "partition": {"method": "iid", "min_samples": 1},
        }
    )
    # Execute
    train, test = load_samples(config, seed=0)
    data = build_federated_data(config, num_clients=3, seed=0)
    # Assert
    assert (len(train), len(test)) == (30, 10)
    assert sorted(r["metadata"]["row"] for r in train + test) == list(range(1, 41))
    assert sum(data.partition.sizes) == 30
    assert all(counts[TEXT_ONLY] == sum(counts.values()) for counts in data.modality_counts())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"output": None}, "field 'output': expected a string or number, got NoneType None"),
        ({"input": "  "}, "field 'input': empty, expected the question"),
        ("not an object", "expected an object with instruction, input and output, got str"),
    ],
)
def test_medalpaca_broken_record_names_file_and_record(tmp_path: Path, change, fragment: str) -> None:
    path = write_flashcards(tmp_path / "cards.json", 3)
    records = json.loads(path.read_text())
    records[1] = change if isinstance(change, str) else {**records[1], **change}
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as info:
        load_medalpaca(path)
    skipped = load_medalpaca(path, on_error="skip")
    assert "cards.json, record 2 (1-based): " in str(info.value) and fragment in str(info.value)
    assert skipped.skipped == 1 and [r["metadata"]["row"] for r in skipped.rows] == [1, 3]


def test_medalpaca_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "cards.json"
    path.write_text('[{"input": "a",\n"output": "b"},\n]')
    with pytest.raises(DataError, match=r"cards.json: not valid JSON \(line 3, column 1"):
        load_medalpaca(path)
    with pytest.raises(DataError, match="nowhere.json: file not found"):
        load_medalpaca(tmp_path / "nowhere.json")


def test_fedmllm_medalpaca_config_partitions_a_standin(tmp_path: Path, configs_dir: Path, capsys) -> None:
    path = write_flashcards(tmp_path / "medical" / "medical_meadow_wikidoc_medical_flashcards.json", 50)
    code = main(
        [
            "partition",
            str(configs_dir / "fedmllm_medalpaca.yaml"),
            "--set",
            f"data.medalpaca.path={path}",
            "--set",
            "data.partition.min_samples=1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "partition.json").read_text())
    # 10% of 50 held out as the global test set; IID over 10 clients.
    assert sorted(saved["sizes"]) == [4] * 5 + [5] * 5
    assert "5 global test rows" in capsys.readouterr().out


@pytest.mark.slow
def test_fedmllm_medalpaca_config_trains_on_text_only_rows(tmp_path: Path, run_seed_config) -> None:
    # Prepare: 40 flashcards; the shipped config with its path redirected, 2 clients.
    path = write_flashcards(tmp_path / "cards.json", 40)
    # Execute
    config, result = run_seed_config(
        "fedmllm_medalpaca.yaml",
        tmp_path,
        "tiny-llava",
        f"data.medalpaca.path={path}",
        "federation.num_clients=2",
        "data.partition.min_samples=2",
        "model.max_new_tokens=4",
    )
    # Assert: the 10% hold-out (4 cards) scored with the caption metrics, each within its range.
    final = result.federated.records[-1]["global"]
    assert config.eval.task == "caption" and final["n"] == 4 and final["cider_d"] >= 0.0
    assert 0.0 <= final["bleu4"] <= 1.0 and 0.0 <= final["rouge_l"] <= 1.0
