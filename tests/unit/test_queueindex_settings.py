"""The ``index:`` section: loaded into IndexSettings, wrong values named at their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from etrn_bridge.audit import AuditLog
from etrn_bridge.backends.mta import MtaBackend
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.queueindex.settings import IndexSettings, parse_duration
from etrn_bridge.service import Service

POLICY = """\
backend: {type: postfix, postqueue: /nonexistent/postqueue}
policy:
  clients:
    - id: acme
      networks: ["192.0.2.0/24"]
      targets: ["acme.example"]
"""


def load(tmp_path: Path, text: str) -> Config:
    config = tmp_path / "etrn.yaml"
    config.write_text(POLICY + text)
    return load_config(config)


def test_without_index_nothing_changes(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.index is None
    service = Service.from_config(config, AuditLog())
    assert isinstance(service.backend, MtaBackend) and service.backend.index is None


def test_index_defaults_and_relative_file(tmp_path: Path) -> None:
    assert load(tmp_path, "index: {}\n").index == IndexSettings(
        Path("/var/lib/etrn-bridge/index.sqlite"), 300.0
    )
    config = load(tmp_path, 'index: {file: state/index.sqlite, reconcile: "5m"}\n')
    assert config.index == IndexSettings(tmp_path / "state/index.sqlite", 300.0)


def test_the_service_backend_reads_the_index(tmp_path: Path) -> None:
    config = load(tmp_path, "index: {file: index.sqlite}\n")
    service = Service.from_config(config, AuditLog())
    assert isinstance(service.backend, MtaBackend) and service.backend.index is not None
    assert service.backend.index.path == tmp_path / "index.sqlite"


@pytest.mark.parametrize("value", ["0s", "0.0m", "300", "5 m", "-1s", "1d"])
def test_bad_reconcile_period(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'index: {{reconcile: "{value}"}}\n')
    assert [p.path for p in caught.value.problems] == [("index", "reconcile")]
    assert caught.value.problems[0].mark.line == 7


def test_unknown_index_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"index\.path: unknown key"):
        load(tmp_path, "index: {path: x}\n")


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("300s", "5m", "1.5h", "0.5s")] == [300, 300, 5400, 0.5]
    with pytest.raises(ValueError, match="not"):
        parse_duration("5 minutes")
