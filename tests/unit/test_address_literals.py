"""RFC 5321 §4.1.3 address literals only: no IPv6 zone ids, no extra characters (issue 7.6)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from etrn_bridge.config import ConfigError, load_config
from etrn_bridge.target import TargetError, parse_target

HOSTILE_LITERALS = [
    "[IPv6:fe80::1%eth0]",
    "[IPv6:::1%$(id)]",
    "[IPv6:::1%25]",
    "[IPv6:::1%]",
    "[IPv6: ::1]",
    "[IPv6:::1 ]",
    "[ 127.0.0.1]",
    "[127.0.0.1%eth0]",
    "[IPv6:::1]]",
    "[[IPv6:::1]",
    "[IPv6:127.0.0.1]",
    "[IPv4:127.0.0.1]",
    "[x-tag:whatever]",
    "[IPv6:::1/128]",
    "[127.0.0.1/8]",
    "[IPv6:0:0:0:0:0:0:0:0:0]",
]


@pytest.mark.parametrize("literal", HOSTILE_LITERALS)
def test_only_rfc5321_literals_are_targets(literal: str) -> None:
    with pytest.raises(TargetError):
        parse_target(literal)


@pytest.mark.parametrize(
    ("literal", "canonical"),
    [
        ("[IPv6:fe80::1]", "[IPv6:fe80::1]"),
        ("[IPv6:::ffff:127.0.0.1]", "[IPv6:::ffff:7f00:1]"),
        ("[127.0.0.1]", "[127.0.0.1]"),
    ],
)
def test_plain_literals_still_parse(literal: str, canonical: str) -> None:
    assert parse_target(literal).name == canonical


def test_policy_loader_refuses_a_zone_id_target(tmp_path: Path) -> None:
    config = tmp_path / "etrn.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            policy:
              clients:
                - id: lan
                  networks: ["127.0.0.0/8"]
                  targets: ["[IPv6:fe80::1%eth0]"]
            """
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any("policy.clients[0].targets[0]" in str(p) for p in caught.value.problems)
