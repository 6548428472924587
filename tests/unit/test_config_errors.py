"""Every kind of config problem is a load error naming file:line:column and the key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from etrn_bridge.config import ConfigError, load_config

VALID_ENTRY = """\
policy:
  clients:
    - id: acme
      networks: ["192.0.2.0/24"]
      targets: ["acme.example"]
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    config = tmp_path / "etrn.yaml"
    config.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return [str(problem).replace(str(tmp_path) + "/", "") for problem in caught.value.problems]


CASES = [
    pytest.param(
        """\
        policy:
          clients:
            - id: acme
              networks: ["192.0.2.0/24"]
              colour: blue
              targets: [acme.example]
        """,
        "etrn.yaml:5:7: policy.clients[0].colour: unknown key",
        id="unknown-key-at-its-own-line",
    ),
    pytest.param(
        "listen: ['127.0.0.1:2525']\nlisten_typo: 1\n" + VALID_ENTRY,
        "etrn.yaml:2:1: listen_typo: unknown key",
        id="unknown-top-level-key",
    ),
    pytest.param(
        VALID_ENTRY.replace('["192.0.2.0/24"]', '"192.0.2.0/24"'),
        "etrn.yaml:4:17: policy.clients[0].networks: '192.0.2.0/24' is not of type 'array'",
        id="wrong-type",
    ),
    pytest.param(
        VALID_ENTRY.replace("192.0.2.0/24", "192.0.2.1/24"),
        "etrn.yaml:4:18: policy.clients[0].networks[0]: '192.0.2.1/24': "
        "192.0.2.1/24 has host bits set",
        id="cidr-host-bits",
    ),
    pytest.param(
        VALID_ENTRY.replace("192.0.2.0/24", "192.0.2.0/33"),
        "etrn.yaml:4:18: policy.clients[0].networks[0]: '192.0.2.0/33'",
        id="cidr-bad-prefix",
    ),
    pytest.param(
        VALID_ENTRY.replace("acme.example", "acme_.example"),
        "etrn.yaml:5:17: policy.clients[0].targets[0]: 'acme_.example': label is not",
        id="bad-domain",
    ),
    pytest.param(
        VALID_ENTRY.replace('["acme.example"]', '["@[192.0.2.1]"]'),
        "etrn.yaml:5:17: policy.clients[0].targets[0]: '@[192.0.2.1]'",
        id="subtree-of-literal",
    ),
    pytest.param(
        VALID_ENTRY
        + '    - id: acme\n      networks: ["192.0.2.0/24"]\n      targets: [b.example]\n',
        "etrn.yaml:6:11: policy.clients[1].id: duplicate id 'acme' (first used by "
        "policy.clients[0])",
        id="duplicate-id",
    ),
    pytest.param(
        VALID_ENTRY + "  deny:\n    - id: acme\n",
        "etrn.yaml:7:11: policy.deny[0].id: duplicate id 'acme'",
        id="duplicate-id-across-sections",
    ),
    pytest.param(
        VALID_ENTRY + "  deny:\n    - id: frozen\n      targets: ['@example']\n",
        "etrn.yaml:3:7: policy.clients[0]: unreachable: every target of this entry is already "
        "decided by deny entry 'frozen'",
        id="unreachable-behind-broader-deny",
    ),
    pytest.param(
        VALID_ENTRY
        + '    - id: later\n      networks: ["192.0.2.128/25"]\n      users: [u]\n'
        + "      targets: [acme.example]\n",
        "etrn.yaml:6:7: policy.clients[1]: unreachable: every target of this entry is already "
        "decided by clients entry 'acme'",
        id="unreachable-behind-earlier-allow",
    ),
    pytest.param(
        "policy:\n  clients:\n    - id: open\n      targets: [acme.example]\n",
        "etrn.yaml:3:7: policy.clients[0]: dangerous: this entry has no networks, users, "
        "tls_fingerprints or rdns",
        id="allow-without-client-matcher",
    ),
    pytest.param(
        "policy:\n  clients:\n    - id: empty\n      users: [u]\n",
        "etrn.yaml:3:7: policy.clients[0]: allows nothing",
        id="allow-without-targets",
    ),
    pytest.param(
        VALID_ENTRY.replace(
            "      networks", '      tls_fingerprints: ["sha256:AB"]\n      networks'
        ),
        "etrn.yaml:4:26: policy.clients[0].tls_fingerprints[0]: 'sha256:AB': not a SHA-256",
        id="bad-fingerprint",
    ),
    pytest.param(
        VALID_ENTRY.replace("      networks", '      rdns: ["*.bad_zone.example"]\n      networks'),
        "etrn.yaml:4:14: policy.clients[0].rdns[0]: '*.bad_zone.example': not a host name",
        id="bad-rdns-pattern",
    ),
    pytest.param(
        "policy: {}\npolicy: {}\n",
        "etrn.yaml:2:1: policy: duplicate key",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        "policy:\n  clients: [\n",
        "etrn.yaml:3:1: (top level): YAML syntax",
        id="yaml-syntax",
    ),
    pytest.param(
        "limits: {per_target: '1 per minute'}\n" + VALID_ENTRY,
        "etrn.yaml:1:22: limits.per_target: '1 per minute' does not match",
        id="bad-rate",
    ),
    pytest.param(
        "limits: {per_client: '5/0s'}\n" + VALID_ENTRY,
        "etrn.yaml:1:22: limits.per_client: '5/0s': the window must be longer than zero",
        id="zero-window",
    ),
    pytest.param(
        VALID_ENTRY.replace("      networks", "      users: [acme]\n      networks"),
        "etrn.yaml:4:7: policy.clients[0].users: can never match: no client can authenticate",
        id="users-without-auth",
    ),
    pytest.param(
        "tls: {cert: c.pem, key: k.pem}\n"
        + VALID_ENTRY.replace("      networks", "      tls_fingerprints: [AB]\n      networks"),
        "etrn.yaml:5:7: policy.clients[0].tls_fingerprints: can never match: "
        "no client certificate is requested",
        id="fingerprints-without-client-ca",
    ),
    pytest.param(
        VALID_ENTRY.replace('      targets: ["acme.example"]', "      targets_file: missing.txt"),
        "etrn.yaml:5:21: policy.clients[0].targets_file: cannot read targets file",
        id="missing-targets-file",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_problem_is_reported_at_its_place(tmp_path: Path, text: str, expected: str) -> None:
    found = problems_of(tmp_path, text)
    assert any(problem.startswith(expected) for problem in found), found


def test_bad_line_in_targets_file_names_that_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "acme.domains").write_text("# customers\nacme.example\n\n  bad..example  # x\n")
    text = VALID_ENTRY.replace(
        '      targets: ["acme.example"]', "      targets_file: acme.domains"
    )
    assert problems_of(tmp_path, text) == [
        "acme.domains:4:3: policy.clients[0].targets_file: 'bad..example': empty label"
    ]


def test_schema_and_semantic_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """\
        session: {idle_timeout: -1}
        policy:
          clients:
            - id: acme
              networks: ["192.0.2.1/24"]
              targets: [acme.example]
              extra: 1
        """,
    )
    assert [problem.split(": ")[1] for problem in found] == [
        "session.idle_timeout",
        "policy.clients[0].networks[0]",
        "policy.clients[0].extra",
    ]


def test_targets_file_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "acme.domains").write_text("acme.example\n@acme.net\n")
    config = tmp_path / "etrn.yaml"
    config.write_text(
        VALID_ENTRY.replace(
            '      targets: ["acme.example"]', "      targets_file: lists/acme.domains"
        )
    )
    policy = load_config(config).policy
    assert [str(t) for t in policy.allow[0].targets] == ["acme.example", "@acme.net"]


def test_fingerprints_are_normalised_at_load(tmp_path: Path) -> None:
    digest = "ab" * 32
    config = tmp_path / "etrn.yaml"
    config.write_text(
        "tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}\n"
        + VALID_ENTRY.replace(
            "      networks", f"      tls_fingerprints: [{digest}]\n      networks"
        )
    )
    (fingerprint,) = load_config(config).policy.allow[0].tls_fingerprints
    assert fingerprint == "sha256:" + ":".join(["AB"] * 32)


def test_users_and_fingerprints_can_match_through_a_hook(tmp_path: Path) -> None:
    """The MTA does AUTH and TLS in plugin mode and passes what it saw: no 'auth' or
    'tls.client_ca' of the bridge's own is needed for these matchers."""
    config = tmp_path / "etrn.yaml"
    config.write_text(
        "hooks: {sendmail: {listen: 'unix:/run/etrn-bridge/sendmail.sock'}}\n"
        + VALID_ENTRY.replace(
            "      networks",
            "      users: [acme]\n      tls_fingerprints: ['" + "AB" * 32 + "']\n      networks",
        )
    )
    [entry] = load_config(config).policy.allow
    assert entry.users == frozenset({"acme"})
