"""The hooks: section (plugin mode): its settings, its errors, and doctor's fast-flush check."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from etrn_bridge.backends.base import create_backend
from etrn_bridge.backends.mta import Level, MtaBackend
from etrn_bridge.cli.check import summary
from etrn_bridge.cli.hookdoctor import check_hooks, fast_flush_finding
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.frontends.sendmail_socketmap import RULESET_KEY
from etrn_bridge.frontends.tlsinfo import fingerprint_from_hex
from etrn_bridge.hookconfig import HookEndpoint

POLICY = """\
policy:
  clients:
    - id: acme
      networks: ["192.0.2.0/24"]
      targets: ["acme.example", "@acme.net", "#acmeq"]
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "etrn.yaml"
    path.write_text(textwrap.dedent(text).rstrip("\n") + "\n" + POLICY)
    return load_config(path)


def test_hooks_without_listen_mean_no_listener(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        hooks:
          postfix_policy: {listen: "unix:/run/etrn-bridge/p.sock", mode: "0660", group: postfix}
          sendmail: {listen: "127.0.0.1:10041", map: other, request_timeout: 2}
        """,
    )
    assert config.listen == ()
    postfix, sendmail = config.hooks
    assert (postfix.frontend, postfix.listen.path, postfix.mode, postfix.group) == (
        "postfix-policy",
        "/run/etrn-bridge/p.sock",
        0o660,
        "postfix",
    )
    assert (sendmail.listen, sendmail.map, sendmail.request_timeout) == (
        HookEndpoint(host="127.0.0.1", port=10041),
        "other",
        2.0,
    )
    assert str(sendmail.listen) == "127.0.0.1:10041"


def test_listen_and_hooks_together(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        listen: ["127.0.0.1:2525"]
        hooks: {exim: {listen: "[::1]:10040"}}
        """,
    )
    assert [str(a) for a in config.listen] == ["127.0.0.1:2525"]
    assert str(config.hooks[0].listen) == "[::1]:10040"


def test_no_hooks_keeps_the_default_listener(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.hooks == () and [str(a) for a in config.listen] == ["127.0.0.1:2525"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hooks: {postfix_policy: {listen: relative.sock}}", "hooks.postfix_policy.listen"),
        ("hooks: {exim: {listen: 'unix:/x', mode: '0999'}}", "hooks.exim.mode"),
        ("hooks: {exim: {}}", "'listen' is a required property"),
        ("hooks: {}", "hooks"),
        ("hooks: {qmail: {listen: 'unix:/x'}}", "hooks.qmail: unknown key"),
        (
            "hooks: {exim: {listen: 'unix:/x'}, sendmail: {listen: 'unix:/x'}}",
            "hooks.sendmail.listen: the same socket as hooks.exim",
        ),
        ("hooks: {postfix_policy: {listen: 'unix:/x', map: m}}", "unknown key"),
    ],
)
def test_hook_config_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert any(expected in str(problem) for problem in caught.value.problems), caught.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":".join(["ab"] * 32), "sha256:" + ":".join(["AB"] * 32)),
        ("AB" * 32, "sha256:" + ":".join(["AB"] * 32)),
        (":".join(["AB"] * 16), None),  # an MD5 digest: not a policy fingerprint
        ("zz" * 32, None),
        ("", None),
        (None, None),
    ],
)
def test_mta_fingerprints(text: str | None, expected: str | None) -> None:
    assert fingerprint_from_hex(text) == expected


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("static:all", Level.OK),
        ("acme.example, acme.net", Level.OK),  # @acme.net: parent matches subdomains
        ("acme.example", Level.FIX),
        ("", Level.FIX),
        ("hash:/etc/postfix/flush", Level.ADVICE),
    ],
)
def test_doctor_fast_flush_eligibility(tmp_path: Path, value: str, level: Level) -> None:
    config = load(tmp_path, "hooks: {postfix_policy: {listen: 'unix:/run/p.sock'}}")
    finding = fast_flush_finding(config, "main.cf", value)
    assert finding.level is level, finding
    if level is Level.FIX:
        assert "acme.net" in finding.text and "#acmeq" not in finding.text


def test_check_summary_names_the_hooks(tmp_path: Path) -> None:
    config = load(tmp_path, "hooks: {exim: {listen: 'unix:/run/etrn-bridge/exim.sock'}}")
    lines = summary(config).splitlines()
    assert "  listen:   none" in lines
    assert "  hooks:    exim-acl on unix:/run/etrn-bridge/exim.sock" in lines


KIT = Path(__file__).parents[2] / "sendmail" / "sendmail.mc.plugin.snippet"


def kit_cf_lines() -> list[str]:
    """What m4 copies of the kit's snippet into sendmail.cf: its K, S and R lines
    verbatim, and the option its define() sets."""
    copied = [line for line in KIT.read_text().splitlines() if line[:1] in ("K", "S", "R")]
    return [*copied, "O CertFingerprintAlgorithm=sha256"]


def sendmail_doctor(tmp_path: Path, cf_lines: list[str]) -> list[tuple[Level, str]]:
    cf = tmp_path / "sendmail.cf"
    cf.write_text("\n".join(cf_lines) + "\n")
    config = load(
        tmp_path,
        f"backend: {{type: sendmail, args: [-C, '{cf}']}}\n"
        "hooks: {sendmail: {listen: 'unix:/run/etrn-bridge/sendmail.sock'}}",
    )
    backend = create_backend(config.backend)
    assert isinstance(backend, MtaBackend)
    return [(f.level, f.text) for f in asyncio.run(check_hooks(config, backend))]


def test_doctor_sendmail_kit_is_ready(tmp_path: Path) -> None:
    """The kit's own lines pass: map, key and fingerprint algorithm are what the
    socketmap front end parses (a key changed on one side only fails here)."""
    findings = sendmail_doctor(tmp_path, kit_cf_lines())
    assert [level for level, _ in findings] == [Level.OK], findings


def test_doctor_sendmail_old_key_and_md5(tmp_path: Path) -> None:
    """A check_etrn built for another key (the earlier "address/argument") and no
    SHA-256 fingerprints: a FIX and an ADVICE saying what to change."""
    lines = [
        line.replace(RULESET_KEY, "$&{client_addr} / $1")
        for line in kit_cf_lines()
        if not line.startswith("O CertFingerprintAlgorithm")
    ]
    findings = sendmail_doctor(tmp_path, lines)
    assert [level for level, _ in findings] == [Level.OK, Level.FIX, Level.ADVICE], findings
    assert "the bridge refuses every ETRN" in findings[1][1]
    assert "tls_fingerprints never match" in findings[2][1]
