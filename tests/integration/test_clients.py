"""Real third-party ETRN clients against the bridge: Perl Net::SMTP and fetchmail.

Both are required by the test suite (CI installs the Debian packages ``perl``
and ``fetchmail``): a missing client FAILS these tests rather than skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from bridgekit import Bridge

NET_SMTP_ETRN = r"""
use strict;
use Net::SMTP;
my ($port, @targets) = @ARGV;
my $smtp = Net::SMTP->new("127.0.0.1", Port => $port, Hello => "perl.client.test", Timeout => 10)
    or die "connect: $@";
for my $target (@targets) {
    my $ok = $smtp->etrn($target) ? "ok" : "refused";
    printf "%s %s %s\n", $target, $ok, $smtp->code;
}
$smtp->quit;
"""


def required_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: CI must install it (apt-get install -y {name})")
    return path


def test_perl_net_smtp_etrn(bridge: Bridge) -> None:
    perl = required_program("perl")
    result = subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [perl, "-e", NET_SMTP_ETRN, str(bridge.port), "customer.example", "other.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "customer.example ok 250",
        "other.example refused 459",
    ]
    records = bridge.etrn_records()
    assert [(r["helo"], r["target"], r["reply"]) for r in records] == [
        ("perl.client.test", "customer.example", 250),
        ("perl.client.test", "other.example", 459),
    ]


def run_fetchmail(bridge: Bridge, home: Path, domains: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    return subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [
            required_program("fetchmail"),
            "--nodetach",
            "--nosyslog",
            "--verbose",
            "--proto",
            "ETRN",
            "--service",
            str(bridge.port),
            "--fetchdomains",
            domains,
            "127.0.0.1",
        ],
        env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fetchmail_etrn_mode(bridge: Bridge, tmp_path: Path) -> None:
    result = run_fetchmail(bridge, tmp_path / "fetchmail", "customer.example,mail.customer.net")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ETRN< 250 2.0.0 OK, queuing for node customer.example started" in result.stdout
    records = bridge.etrn_records()
    assert [(r["target"], r["reply"]) for r in records] == [
        ("customer.example", 250),
        ("mail.customer.net", 250),
    ]


def test_fetchmail_sees_459_as_refusal(bridge: Bridge, tmp_path: Path) -> None:
    result = run_fetchmail(bridge, tmp_path / "fetchmail", "other.example")
    # fetchmail maps 459 to PS_AUTHFAIL (exit 3, "authentication failed").
    assert result.returncode == 3, result.stdout + result.stderr
    assert bridge.etrn_records()[0]["reply"] == 459
