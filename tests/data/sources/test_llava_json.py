"""Tests for the llava_json source (fedumm.data.sources.llava_json): LLaVA conversation files, chat-style
turns, broken records, and the source through DataConfig."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedumm.data.sources.llava_json import load_llava_json
from fedumm.errors import DataError

# One human/gpt pair, for the parametrized broken records (the other tests use the conversation fixture).
_ONE_TURN = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]


def test_llava_multi_turn_gives_one_sample_per_pair(tmp_path: Path, write_image, conversation) -> None:
    # Prepare
    records = [
        {
            "id": "a",
            "image": write_image("a.png", (9, 9, 9)),
            "conversations": conversation(("<image>\nWhat colour?", "grey"), ("Is it dark?", "yes")),
        },
        {"id": "b", "conversations": conversation(("What is 2+2?", "4"))},
        {
            "id": "c",
            "image": [write_image("c1.png", (1, 1, 1)), write_image("c2.png", (2, 2, 2))],
            "conversations": conversation(("Compare <image> and <image>.", "same")),
        },
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    # Execute
    result = load_llava_json(tmp_path / "train.json", tmp_path)
    rows = result.rows
    # Assert: 2 + 1 + 1 samples; placeholder removed; the image stays with every pair.
    assert [r["question"] for r in rows] == ["What colour?", "Is it dark?", "What is 2+2?", "Compare  and ."]
    assert [r["multiple_choice_answer"] for r in rows] == ["grey", "yes", "4", "same"]
    assert [r["answers"] for r in rows] == [["grey"], ["yes"], ["4"], ["same"]]
    assert rows[0]["image"] is rows[1]["image"] and rows[0]["image"].load().getpixel((0, 0)) == (9, 9, 9)
    assert rows[2]["image"] is None
    assert [im.load().getpixel((0, 0)) for im in rows[3]["images"]] == [(1, 1, 1), (2, 2, 2)]
    assert [(r["metadata"]["row"], r["metadata"]["turn"], r["metadata"]["id"]) for r in rows] == [
        (1, 1, "a"),
        (1, 2, "a"),
        (2, 1, "b"),
        (3, 1, "c"),
    ]


def test_llava_image_root_defaults_to_the_json_folder(tmp_path: Path, write_image, conversation) -> None:
    records = [{"id": 1, "image": write_image("x.png"), "conversations": conversation(("q", "a"))}]
    (tmp_path / "f.json").write_text(json.dumps(records))
    assert load_llava_json(tmp_path / "f.json").rows[0]["image"].size == (8, 8)


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"image": "images/none.png", "conversations": _ONE_TURN}, "none.png not found"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "alternating human/gpt turns"),
        ({"conversations": []}, "non-empty list"),
        (
            {"conversations": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]},
            "conversations[0]: 'from' is 'gpt'",
        ),
        ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}]}, "conversations[0]"),
        ({"label": [1], "conversations": _ONE_TURN}, "field 'label'"),
        (["not", "a", "record"], "expected a conversation object"),
    ],
)
def test_llava_broken_record_names_file_and_record(
    tmp_path: Path, write_image, conversation, record, fragment: str
) -> None:
    # Prepare: record 2 is the broken one.
    good = {"image": write_image("ok.png"), "conversations": conversation(("q", "a"))}
    path = tmp_path / "train.json"
    path.write_text(json.dumps([good, record, good]))
    # Execute / Assert: raise by default ...
    with pytest.raises(DataError) as info:
        load_llava_json(path, tmp_path)
    assert f"{path}, record 2 (1-based): " in str(info.value) and fragment in str(info.value)
    # ... or skip and count.
    skipped = load_llava_json(path, tmp_path, on_error="skip")
    assert (len(skipped.rows), skipped.skipped) == (2, 1)


@pytest.mark.parametrize(
    ("text", "fragment"), [("[1, 2", "not valid JSON (line 1"), ('{"a": 1}', "expected a JSON list")]
)
def test_llava_bad_file_raises(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "f.json").write_text(text)
    with pytest.raises(DataError, match=re.escape(fragment)):
        load_llava_json(tmp_path / "f.json", tmp_path, on_error="skip")


def test_unknown_on_error_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text("[]")
    with pytest.raises(ValueError, match="on_error"):
        load_llava_json(tmp_path / "f.json", on_error="ignore")


def test_llava_accepts_fedmllm_role_content_turns(tmp_path: Path, write_image) -> None:
    # Prepare: FedMLLM's generator output: "image": null for a text-less record, role/content turns;
    # and a chat-style content list with an image part.
    records = [
        {
            "id": 1,
            "image": None,
            "conversations": [
                {"role": "user", "content": "Is the content hateful?"},
                {"role": "assistant", "content": "(A) not-hateful"},
            ],
        },
        {
            "id": 2,
            "image": write_image("m.png"),
            "conversations": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hateful?"}]},
                {"role": "assistant", "content": "(B) hateful"},
            ],
        },
    ]
    (tmp_path / "client_0.json").write_text(json.dumps(records))
    # Execute
    rows = load_llava_json(tmp_path / "client_0.json", tmp_path).rows
    # Assert
    assert [(r["question"], r["multiple_choice_answer"]) for r in rows] == [
        ("Is the content hateful?", "(A) not-hateful"),
        ("Hateful?", "(B) hateful"),
    ]
    assert rows[0]["image"] is None and rows[1]["image"].size == (8, 8)


@pytest.mark.parametrize(
    ("turns", "fragment"),
    [
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "conversations[1]: empty answer"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "conversations[1]: empty answer"),
        (
            [{"role": "system", "content": "q"}, {"role": "assistant", "content": "a"}],
            "conversations[0]: 'role' is 'system'",
        ),
        (
            [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}],
            "conversations[0]: expected {'role': ..., 'content': str}",
        ),
    ],
)
def test_llava_bad_turns_are_broken_records(tmp_path: Path, turns: list, fragment: str) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps([{"conversations": turns}]))
    with pytest.raises(DataError) as info:
        load_llava_json(path)
    assert f"{path}, record 1 (1-based): {fragment}" in str(info.value)


def test_llava_single_item_image_list_still_gives_images(tmp_path: Path, write_image, conversation) -> None:
    record = {"image": [write_image("a.png", (5, 5, 5))], "conversations": conversation(("q", "a"))}
    (tmp_path / "f.json").write_text(json.dumps([record]))
    row = load_llava_json(tmp_path / "f.json", tmp_path).rows[0]
    assert len(row["images"]) == 1 and row["image"] is row["images"][0]


def test_llava_non_utf8_bytes_name_the_file_and_the_byte_offset(tmp_path: Path) -> None:
    # Prepare: a cp1252 right quote (0x92) inside a question on line 2.
    head = b'[{"id": 1, "conversations": [\n{"from": "human", "value": "it'
    path = tmp_path / "f.json"
    path.write_bytes(head + b'\x92s"}, {"from": "gpt", "value": "a"}]}]')
    # Execute / Assert
    with pytest.raises(DataError) as caught:
        load_llava_json(path)
    assert str(caught.value) == (
        f"{path}: not UTF-8 text: byte 0x92 at byte offset {len(head)} (0-based, line 2) (invalid start byte); "
        "save the file as UTF-8"
    )


def test_llava_image_outside_the_root_names_the_key(tmp_path: Path, write_image, conversation) -> None:
    # Prepare: image_root is images/; the record climbs out of it.
    write_image("a.png")
    (tmp_path / "x.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    records = [{"id": 1, "image": "../x.png", "conversations": conversation(("q", "a"))}]
    (tmp_path / "f.json").write_text(json.dumps(records))
    # Execute
    result = load_llava_json(tmp_path / "f.json", tmp_path / "images", on_error="skip")
    allowed = load_llava_json(tmp_path / "f.json", tmp_path / "images", allow_outside_root=True)
    # Assert
    assert result.skipped == 1 and "record 1 (1-based): image path '../x.png' resolves to" in result.problems[0]
    assert result.problems[0].endswith("set data.llava_json.allow_outside_root: true to read images outside it")
    assert allowed.rows[0]["image"].size == (8, 8)


# ---------------------------------------------------------------- text-to-image records


def _t2i_record(image: str, prompt: str = "a red square", **extra) -> dict:
    turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": "<image>"}]
    return {"id": "r", "image": image, "conversations": turns, **extra}


def test_llava_t2i_records(tmp_path: Path, write_image) -> None:
    # Prepare: the gpt turn may be "<image>" or left out; an "<image>" in the prompt is dropped.
    meta = {"tag": "single_object", "include": [{"class": "square", "count": 1}]}
    only_prompt = {
        "id": "s",
        "image": write_image("b.png"),
        "conversations": [{"from": "human", "value": "<image>\na cat"}],
    }
    path = tmp_path / "t2i.json"
    path.write_text(json.dumps([_t2i_record(write_image("a.png"), geneval=meta), only_prompt]))
    # Execute
    rows = load_llava_json(path, task="t2i").rows
    # Assert
    assert [r["prompt"] for r in rows] == ["a red square", "a cat"]
    assert rows[0]["geneval"] == {**meta, "prompt": "a red square"} and "geneval" not in rows[1]
    assert all(r["task"] == "t2i" and r["image"].size == (8, 8) and r["answers"] == [] for r in rows)
    assert rows[1]["metadata"] == {"source": str(path), "row": 2, "id": "s"}


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"id": "x", "image": "images/a.png", "conversations": []}, "a t2i record has the human prompt"),
        (
            {
                **_t2i_record("images/a.png"),
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "red"}],
            },
            "a t2i record's answer is the image",
        ),
        ({**_t2i_record("images/a.png"), "image": None}, "a t2i record needs its target image"),
        ({**_t2i_record("images/a.png"), "image": ["images/a.png"]}, "a t2i record needs its target image"),
        (_t2i_record("images/a.png", prompt="<image>"), "field 'prompt': expected a non-empty string"),
        (_t2i_record("images/a.png", geneval={"tag": "x", "include": "dog"}), "'include' must be a non-empty list"),
    ],
)
def test_llava_t2i_bad_records_name_file_and_record(tmp_path: Path, write_image, record: dict, fragment: str) -> None:
    write_image("a.png")
    path = tmp_path / "t2i.json"
    path.write_text(json.dumps([_t2i_record("images/a.png"), record]))
    with pytest.raises(DataError) as info:
        load_llava_json(path, task="t2i")
    assert str(info.value).startswith(f"{path}, record 2 (1-based): ") and fragment in str(info.value)
