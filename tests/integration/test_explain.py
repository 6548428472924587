"""``etrn-bridge explain``: single queries, --batch and --replay of a real audit file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from etrn_bridge.audit import AuditLog
from etrn_bridge.cli import main
from etrn_bridge.config import load_config
from etrn_bridge.request import Identity, Request
from etrn_bridge.service import Service

CONFIG = """\
tls: {cert: cert.pem, key: key.pem, client_ca: ca.pem}
auth: {passwords_file: passwords}
limits: {per_client: "off"}
policy:
  clients:
    - id: acme
      networks: ["192.0.2.0/24", "2001:db8::/32"]
      targets: ["acme.example", "@acme.net"]
    - id: vip
      users: [vip]
      tls_fingerprints: ["sha256:{fp}"]
      targets: ["vip.example"]
    - id: dialup
      rdns: ["*.dyn.isp.example"]
      targets: ["dialup.example"]
  deny:
    - id: frozen
      targets: ["old.acme.net"]
""".replace("{fp}", ":".join(["0F"] * 32))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etrn.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize(
    ("arguments", "status", "first_line"),
    [
        (["--client", "192.0.2.1", "x.acme.net"], 0, "allow x.acme.net for 192.0.2.1"),
        (["--client", "192.0.2.1", "old.acme.net"], 1, "deny old.acme.net for 192.0.2.1"),
        (["--client", "::ffff:192.0.2.1", "acme.example"], 0, "allow acme.example"),
        (["--client", "198.51.100.1", "acme.example"], 1, "deny acme.example"),
        (
            [
                "--client",
                "203.0.113.1",
                "--user",
                "vip",
                "--tls-fingerprint",
                "0f" * 32,
                "vip.example",
            ],
            0,
            "allow vip.example",
        ),
        (["--client", "203.0.113.1", "--user", "vip", "vip.example"], 1, "deny vip.example"),
        (["--client", "203.0.113.1", "--rdns", "a.dyn.isp.example", "dialup.example"], 0, "allow"),
        (["--client", "203.0.113.1", "dialup.example"], 1, "deny dialup.example"),
    ],
)
def test_single_query(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    status: int,
    first_line: str,
) -> None:
    assert main(["explain", "-c", str(config), *arguments]) == status
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(first_line)
    assert out[1].startswith("  rule:") and out[2].startswith("  why:")


def test_old_acme_deny_says_which_entry_and_why(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["explain", "-c", str(config), "--client", "192.0.2.1", "old.acme.net"])
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  rule:   frozen",
        "  why:    denied by deny entry 'frozen': target old.acme.net covers old.acme.net; "
        "client matched by any client",
    ]


@pytest.mark.parametrize(
    "arguments",
    [
        ["--client", "not-an-ip", "acme.example"],
        ["--client", "192.0.2.1", "bad..name"],
        ["acme.example"],
    ],
)
def test_usage_errors_exit_2(config: Path, arguments: list[str]) -> None:
    assert main(["explain", "-c", str(config), *arguments]) == 2


def test_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {clients: [{id: x, networks: [300.1.1.1/8], targets: [a.example]}]}\n")
    assert main(["explain", "-c", str(bad), "--client", "192.0.2.1", "a.example"]) == 2
    assert "networks[0]" in capsys.readouterr().err


def test_batch(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text(
        textwrap.dedent(
            f"""\
            # client target options
            192.0.2.1 acme.example
            2001:db8::1 @sub.acme.net
            203.0.113.1 vip.example user=vip fp={"0F" * 32}
            203.0.113.1 dialup.example rdns=h.dyn.isp.example
            192.0.2.1 old.acme.net
            192.0.2.1 acme.example colour=blue
            """
        )
    )
    assert main(["explain", "-c", str(config), "--batch", str(queries)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "allow 192.0.2.1 acme.example rule=acme",
        "allow 2001:db8::1 @sub.acme.net rule=acme",
        "allow 203.0.113.1 vip.example rule=vip",
        "allow 203.0.113.1 dialup.example rule=dialup",
        "deny 192.0.2.1 old.acme.net rule=frozen",
        "error line 7: 'colour=blue': expected one of user=, fp=, rdns=",
    ]


async def test_replay_prints_only_decisions_that_would_change(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    audit = AuditLog(audit_file)
    service = Service.from_config(load_config(config), audit)
    for client, argument in [
        ("192.0.2.1", "acme.example"),  # allowed, stays allowed
        ("192.0.2.1", "www.acme.net"),  # allowed, will be frozen
        ("198.51.100.1", "acme.example"),  # denied, will be allowed
        ("192.0.2.1", "bad..name"),  # 501: no decision to replay
    ]:
        await service.handle(Request(Identity(client), argument))
    audit.close()
    edited = tmp_path / "edited.yaml"
    edited.write_text(
        CONFIG.replace('"192.0.2.0/24"', '"192.0.2.0/24", "198.51.100.0/24"').replace(
            '["old.acme.net"]', '["old.acme.net", "www.acme.net"]'
        )
    )

    assert main(["explain", "-c", str(edited), "--replay", str(audit_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert " 192.0.2.1 www.acme.net: allow (rule acme) -> deny (rule frozen)" in lines[0]
    assert " 198.51.100.1 acme.example: deny (rule -) -> allow (rule acme)" in lines[1]
    assert lines[2] == "3 requests re-decided, 2 would change"
