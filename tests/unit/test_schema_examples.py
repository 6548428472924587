"""Loader, JSON Schema, shipped examples and docs cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from etrn_bridge.cli import main
from etrn_bridge.cli.schema import REFERENCE_BEGIN, REFERENCE_END, reference_markdown
from etrn_bridge.config import load_config
from etrn_bridge.schema import config_schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"etrn-bridge.yaml", "isp.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_loader_and_plain_jsonschema(example: Path) -> None:
    load_config(example)
    data = yaml.safe_load(example.read_text())
    jsonschema.Draft202012Validator(config_schema()).validate(data)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_check_accepts_example(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(example)]) == 0
    assert capsys.readouterr().out.startswith(f"{example}: OK")


def test_check_lists_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listen: 5\npolicy:\n  clients:\n    - id: x\n      networks: [nonsense]\n")
    assert main(["check", "-c", str(config)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{config}:1:9: listen: 5 is not of type 'array'")
    assert lines[-1] == f"{config}: 3 errors"


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()


def test_shipped_schema_file_is_current() -> None:
    shipped = json.loads((REPO / "examples" / "etrn-bridge.schema.json").read_text())
    assert shipped == config_schema(), "run: etrn-bridge schema > examples/etrn-bridge.schema.json"


def test_configuration_reference_is_current() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    start, end = doc.index(REFERENCE_BEGIN), doc.index(REFERENCE_END) + len(REFERENCE_END)
    assert doc[start:end] == reference_markdown(config_schema()), (
        "regenerate the tables: etrn-bridge schema --markdown"
    )
