import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from fedumm.cli import main
from fedumm.config import RunConfig
from fedumm.config_base import Section
from fedumm.config_doc import allowed_values, config_reference, sections, type_name

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == config_reference(), (
        "docs/configuration.md is out of date: run `fedumm config --reference > docs/configuration.md`"
    )


def test_every_key_of_every_section_is_documented_with_help():
    # Prepare: every leaf key of the typed config, dotted.
    keys = []
    for dotted, _, fields in sections(RunConfig):
        prefix = "" if dotted == "(top level)" else f"{dotted}."
        keys += [(f"{prefix}{name}", info) for name, info in fields]

    # Assert: each has a row in the reference, and a help text.
    reference = config_reference()
    assert len(keys) > 100
    for key, info in keys:
        assert f"| `{key}` |" in reference, key
        assert info.description, f"{key} has no description"


@pytest.mark.parametrize(
    ("annotation", "name", "allowed"),
    [
        (int, "int", []),
        (float | Literal["auto"] | None, "float | str | null", ["auto"]),
        (Literal["a", "b"], "one of", ["a", "b"]),
        (list[Literal["tensorboard", "mlflow"]], "list of one of", ["tensorboard", "mlflow"]),
        (dict[str, int], "mapping str → int", []),
    ],
)
def test_types_and_allowed_values_read_from_annotations(annotation, name, allowed):
    assert type_name(annotation) == name
    assert allowed_values(annotation) == allowed


def test_a_section_row_shows_default_bounds_and_help():
    class Tiny(Section):
        rate: float = Field(0.5, ge=0, lt=1, description="A rate.")

    ((_, _, fields),) = list(sections(Tiny))
    assert [name for name, _ in fields] == ["rate"]
    reference = config_reference()
    assert "| `federation.num_clients` | int | `4` | ≥ 1, ≤ 10000 | Clients the data is split across. |" in reference
    assert "### `fedprox`" in reference and "`federation.strategy.mu`" in reference


def test_config_schema_prints_the_json_schema(capsys):
    assert main(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "RunConfig" and "federation" in schema["properties"]
    assert schema["$defs"]["FederationConfig"]["additionalProperties"] is False
