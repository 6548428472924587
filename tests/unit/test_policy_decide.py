"""Decisions of the compiled policy, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from etrn_bridge.config import parse_config
from etrn_bridge.policy.model import Policy
from etrn_bridge.request import Identity
from etrn_bridge.target import parse_target

FINGERPRINT = "sha256:" + ":".join(["AB"] * 32)

POLICY = f"""
tls: {{cert: cert.pem, key: key.pem, client_ca: ca.pem}}
auth: {{passwords_file: passwords}}
policy:
  clients:
    - id: acme
      networks: ["192.0.2.0/24", "2001:db8:1::/48"]
      targets: ["acme.example", "@acme.net", "#acme"]
    - id: acme-auth
      users: [acme]
      networks: ["198.51.100.0/24"]
      targets: ["@acme.example"]
    - id: cert
      tls_fingerprints: ["{FINGERPRINT.lower().replace(":", "").replace("sha256", "")}"]
      targets: [cert.example]
    - id: dialup
      rdns: ["*.dyn.isp.example", "static.isp.example"]
      targets: ["@dialup.example"]
  deny:
    - id: frozen
      targets: ["old.acme.net"]
    - id: blocked-host
      networks: ["192.0.2.66/32"]
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_config(POLICY, Path("/nonexistent/etrn.yaml")).policy


CASES = [
    # client, target, extra identity, verified rDNS names, allowed, rule
    ("192.0.2.10", "acme.example", {}, (), True, "acme"),
    ("192.0.2.10", "ACME.Example.", {}, (), True, "acme"),
    ("192.0.2.10", "www.acme.example", {}, (), False, None),  # node only, not subdomains
    ("192.0.2.10", "@acme.example", {}, (), False, None),  # 'x' does not cover '@x'
    ("192.0.2.10", "acme.net", {}, (), True, "acme"),  # '@x' covers x
    ("192.0.2.10", "a.b.acme.net", {}, (), True, "acme"),
    ("192.0.2.10", "notacme.net", {}, (), False, None),  # no substring matching
    ("192.0.2.10", "acme.net.evil.example", {}, (), False, None),
    ("192.0.2.10", "#acme", {}, (), True, "acme"),
    ("192.0.2.10", "#other", {}, (), False, None),
    ("192.0.2.10", "old.acme.net", {}, (), False, "frozen"),  # deny wins over '@acme.net'
    # '@acme.net' would take old.acme.net's mail in too: the denied name inside refuses it.
    ("192.0.2.10", "@acme.net", {}, (), False, "frozen"),
    ("192.0.2.10", "@old.acme.net", {}, (), False, "frozen"),
    ("192.0.2.10", "@b.acme.net", {}, (), True, "acme"),  # old.acme.net is not under b
    ("192.0.2.66", "acme.example", {}, (), False, "blocked-host"),  # deny without targets
    ("192.0.3.10", "acme.example", {}, (), False, None),
    ("2001:db8:1:ff::7", "acme.example", {}, (), True, "acme"),
    ("2001:db8:2::7", "acme.example", {}, (), False, None),
    ("::ffff:192.0.2.10", "acme.example", {}, (), True, "acme"),  # IPv4-mapped
    ("198.51.100.5", "mx.acme.example", {"auth_user": "acme"}, (), True, "acme-auth"),
    ("198.51.100.5", "mx.acme.example", {"auth_user": "other"}, (), False, None),
    ("198.51.100.5", "mx.acme.example", {}, (), False, None),  # AND: user is required
    ("192.0.2.10", "mx.acme.example", {"auth_user": "acme"}, (), False, None),  # wrong net
    ("203.0.113.1", "cert.example", {"tls_fingerprint": FINGERPRINT}, (), True, "cert"),
    ("203.0.113.1", "cert.example", {"tls_fingerprint": FINGERPRINT.lower()}, (), True, "cert"),
    ("203.0.113.1", "cert.example", {"tls_fingerprint": "sha256:" + "00" * 32}, (), False, None),
    ("203.0.113.1", "cert.example", {}, (), False, None),
    ("203.0.113.9", "dialup.example", {}, ("h1.dyn.isp.example",), True, "dialup"),
    ("203.0.113.9", "x.dialup.example", {}, ("STATIC.isp.example.",), True, "dialup"),
    ("203.0.113.9", "dialup.example", {}, ("dyn.isp.example",), False, None),  # '*.' needs a label
    ("203.0.113.9", "dialup.example", {}, ("h1.dyn.isp.example.evil",), False, None),
    ("203.0.113.9", "dialup.example", {"helo": "h1.dyn.isp.example"}, (), False, None),
]


@pytest.mark.parametrize(("client", "target", "extra", "names", "allowed", "rule"), CASES)
def test_decision(
    policy: Policy,
    client: str,
    target: str,
    extra: dict[str, str],
    names: tuple[str, ...],
    allowed: bool,
    rule: str | None,
) -> None:
    decision = policy.decide(Identity(client, **extra), parse_target(target), names)  # type: ignore[arg-type]
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason


def test_first_matching_allow_entry_in_file_order_decides() -> None:
    policy = parse_config(
        """
tls: {cert: cert.pem, key: key.pem}
auth: {passwords_file: passwords}
policy:
  clients:
    - id: wide
      networks: ["192.0.2.0/24"]
      targets: ["@example.org"]
    - id: narrow
      networks: ["192.0.2.0/24"]
      users: [u]
      targets: ["a.example.org", "only-narrow.example"]
""",
        Path("/nonexistent/etrn.yaml"),
    ).policy
    identity = Identity("192.0.2.1", auth_user="u")
    assert policy.decide(identity, parse_target("a.example.org")).rule == "wide"
    assert policy.decide(identity, parse_target("only-narrow.example")).rule == "narrow"


def test_needs_rdns_only_for_targets_whose_entries_use_it(policy: Policy) -> None:
    assert policy.uses_rdns
    assert policy.needs_rdns(parse_target("a.dialup.example"))
    assert not policy.needs_rdns(parse_target("acme.example"))


def test_reason_names_the_entry_and_the_covering_target(policy: Policy) -> None:
    decision = policy.decide(Identity("192.0.2.10"), parse_target("x.acme.net"))
    assert decision.reason == (
        "allowed by clients entry 'acme': target @acme.net covers x.acme.net; "
        "client matched by networks"
    )


def test_deny_inside_a_subtree_request_says_so(policy: Policy) -> None:
    decision = policy.decide(Identity("192.0.2.10"), parse_target("@acme.net"))
    assert decision.reason == (
        "denied by deny entry 'frozen': target old.acme.net lies inside @acme.net; "
        "client matched by any client"
    )


def test_deny_of_a_node_refuses_the_subtree_of_that_node() -> None:
    policy = parse_config(
        """
policy:
  clients:
    - id: acme
      networks: ["192.0.2.0/24"]
      targets: ["@acme.example"]
  deny:
    - id: apex-frozen
      targets: ["acme.example"]
""",
        Path("/nonexistent/etrn.yaml"),
    ).policy
    identity = Identity("192.0.2.1")
    assert policy.decide(identity, parse_target("@acme.example")).rule == "apex-frozen"
    assert not policy.decide(identity, parse_target("@acme.example")).allowed
    assert policy.decide(identity, parse_target("www.acme.example")).allowed
    assert policy.decide(identity, parse_target("@www.acme.example")).allowed
