"""Plugin mode on the real MTAs: the client talks to the MTA, the MTA asks the bridge.

Each lab MTA has an extra SMTP port configured from its kit's plugin snippet
(tests/mta/lab: Postfix smtpd, Exim daemon port, Sendmail daemon), asking
the bridge's hook on a unix socket under $MTA_LAB/run. The bridge runs as
``etrn-bridge serve`` with that MTA's backend and only that hook (plus its
listener: one process serves any mix). Clients: smtplib, Perl Net::SMTP and
fetchmail, all pointed at the MTA's port, never at the bridge.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bridgekit import Bridge, launch_bridge, write_config
from mtalab import (
    LAB_TLS,
    NAMED_QUEUE,
    NODE,
    QUEUED,
    RECIPIENTS,
    SUBTREE,
    LabMta,
    certificate_fingerprint,
    lab_env,
)

# config key of the hook and the group the MTA's process is in
HOOKS = {
    "postfix": ("postfix_policy", "postfix"),
    "exim": ("exim", "Debian-exim"),
    "sendmail": ("sendmail", "root"),
}
FRONTENDS = {"postfix": "postfix-policy", "exim": "exim-acl", "sendmail": "sendmail-socketmap"}
# customer.test and its subtree may be flushed; mycustomer.test (a trap) may not.
ALLOWED = ["customer.test", "@customer.test", "noflush.test", "#" + NAMED_QUEUE]
CLIENT_ADDRESS = "127.0.0.2"
NOTHING_MOVES = 2.0  # seconds watched for mail that must not arrive

NET_SMTP_ETRN = r"""
use strict;
use Net::SMTP;
my ($port, $target) = @ARGV;
my $smtp = Net::SMTP->new("127.0.0.1", Port => $port, Hello => "perl.client.test", Timeout => 30)
    or die "connect: $@";
$smtp->etrn($target);
printf "%s %s\n", $smtp->code, $smtp->message;
$smtp->quit;
"""


def required_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: CI must install it (apt-get install -y {name})")
    return path


class Hooked:
    """One MTA in plugin mode and the bridge it asks."""

    def __init__(self, mta: LabMta, tmp_path: Path) -> None:
        self.mta = mta
        self.directory = tmp_path
        env = lab_env(mta.name)
        prefix = mta.name.upper()
        self.port = int(env[f"{prefix}_HOOK_PORT"])
        self.socket = env[f"{prefix}_HOOK_SOCKET"]
        self.bridge: Bridge | None = None
        self.client_port = 0  # of the last etrn()

    def start_bridge(self, clients: list[dict[str, Any]] | None = None) -> Bridge:
        """The bridge with this MTA's hook; ``clients``: the policy (default: the lab's
        loopback may flush ALLOWED)."""
        hook, group = HOOKS[self.mta.name]
        config: dict[str, Any] = {
            # postfix/README.md "Plugin mode": Postfix flushes the site itself after OK
            "backend": {**self.mta.backend_options, "flush_by_id": True}
            if self.mta.name == "postfix"
            else self.mta.backend_options,
            "hooks": {hook: {"listen": f"unix:{self.socket}", "group": group}},
            "policy": {
                "clients": clients
                or [{"id": "lab", "networks": ["127.0.0.0/8"], "targets": ALLOWED}]
            },
        }
        self.bridge = launch_bridge(self.directory, config)
        return self.bridge

    def stop_bridge(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

    def etrn(
        self,
        argument: str,
        source: str = "127.0.0.1",
        login: tuple[str, str] | None = None,
    ) -> tuple[int, str]:
        """smtplib to the MTA's plugin-mode port: EHLO, [AUTH,] ETRN, QUIT."""
        with smtplib.SMTP(
            "127.0.0.1",
            self.port,
            local_hostname="client.test",
            timeout=60,
            source_address=(source, 0),
        ) as smtp:
            smtp.ehlo()
            assert smtp.sock is not None
            self.client_port = smtp.sock.getsockname()[1]
            if login is not None:
                smtp.login(*login)
            code, text = smtp.docmd("ETRN", argument)
        return code, text.decode()

    def etrn_over_tls(self, client_certificate: str | None) -> tuple[int, str]:
        """EHLO, STARTTLS (with a certificate of LAB_TLS, or none), EHLO, ETRN customer.test."""
        context = ssl.create_default_context(cafile=str(LAB_TLS / "ca.pem"))
        if client_certificate is not None:
            context.load_cert_chain(str(LAB_TLS / client_certificate))
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=60) as smtp:
            smtp.starttls(context=context)  # the lab's MTA certificate is for 127.0.0.1
            smtp.ehlo()
            code, text = smtp.docmd("ETRN", "customer.test")
        return code, text.decode()

    def records(self) -> list[dict[str, Any]]:
        assert self.bridge is not None
        return self.bridge.etrn_records()


@pytest.fixture
def hooked(mta: LabMta, tmp_path: Path) -> Iterator[Hooked]:
    plugged = Hooked(mta, tmp_path)
    plugged.start_bridge()
    try:
        yield plugged
    finally:
        plugged.stop_bridge()


def assert_exact_node_flush(hooked: Hooked) -> None:
    """Only customer.test's two messages arrive; every substring trap stays queued."""
    mta = hooked.mta
    received = mta.wait_received(NODE)
    assert set(received) == NODE
    assert all(received[rcpt] == mta.sent[rcpt] for rcpt in NODE)
    assert mta.queued_recipients() == set(RECIPIENTS) - NODE


def test_smtplib_etrn_flushes_exactly(hooked: Hooked) -> None:
    hooked.mta.inject()
    # from 127.0.0.2: the audit names the MTA's client, not the MTA (which
    # reaches the bridge over a unix socket)
    code, text = hooked.etrn("customer.test", source=CLIENT_ADDRESS)
    if hooked.mta.name == "postfix":
        assert (code, text) == (250, "Queuing started")  # Postfix's own words, always
    else:
        assert (code, text) == (253, "2.0.0 OK, 2 pending messages for node customer.test started")
    assert_exact_node_flush(hooked)
    [record] = hooked.records()
    assert record["frontend"] == FRONTENDS[hooked.mta.name]
    assert (record["target"], record["reply"], record["pending"]) == ("customer.test", 253, 2)
    assert (record["client_ip"], record["client_port"]) == (CLIENT_ADDRESS, hooked.client_port)
    # Sendmail has no HELO macro before MAIL (sendmail/README.md)
    assert record["helo"] == (None if hooked.mta.name == "sendmail" else "client.test")


def test_perl_net_smtp_etrn(hooked: Hooked) -> None:
    hooked.mta.inject()
    result = subprocess.run(
        [required_program("perl"), "-e", NET_SMTP_ETRN, str(hooked.port), "customer.test"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split()[0] == ("250" if hooked.mta.name == "postfix" else "253")
    assert_exact_node_flush(hooked)
    [record] = hooked.records()
    assert record["helo"] == (None if hooked.mta.name == "sendmail" else "perl.client.test")


def test_fetchmail_etrn(hooked: Hooked, tmp_path: Path) -> None:
    hooked.mta.inject()
    home = tmp_path / "fetchmail"
    home.mkdir()
    result = subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [
            required_program("fetchmail"),
            *("--nodetach", "--nosyslog", "--verbose", "--proto", "ETRN"),
            *("--service", str(hooked.port), "--fetchdomains", "customer.test", "127.0.0.1"),
        ],
        env={**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_exact_node_flush(hooked)
    assert [r["target"] for r in hooked.records()] == ["customer.test"]


def test_subtree_and_case(hooked: Hooked) -> None:
    """Exim and Sendmail pass '@' through: the bridge flushes the subtree exactly.
    Postfix strips it before asking: the request is the node (postfix/README.md)."""
    hooked.mta.inject()
    code, _ = hooked.etrn("@Customer.Test")
    assert code in (250, 253)
    expected = NODE if hooked.mta.name == "postfix" else SUBTREE
    assert set(hooked.mta.wait_received(expected)) == expected
    assert hooked.mta.queued_recipients() == set(RECIPIENTS) - expected
    [record] = hooked.records()
    assert record["argument"] == (
        "Customer.Test" if hooked.mta.name == "postfix" else "@Customer.Test"
    )


def test_denied_is_459_from_the_mta_and_moves_nothing(hooked: Hooked) -> None:
    hooked.mta.inject()
    code, text = hooked.etrn("mycustomer.test")
    assert code == 459, text
    assert "not allowed" in text
    assert hooked.mta.wait_received(set(), timeout=NOTHING_MOVES) == {}
    assert hooked.mta.queued_recipients() == set(RECIPIENTS)
    [record] = hooked.records()
    assert (record["decision"], record["reply"]) == ("deny", 459)


def test_bridge_stopped_is_4xx_and_moves_nothing(hooked: Hooked) -> None:
    hooked.mta.inject()
    hooked.stop_bridge()
    assert not os.path.exists(hooked.socket)  # removed on a clean stop
    code, text = hooked.etrn("customer.test")
    assert 400 <= code < 500, (code, text)
    assert hooked.mta.wait_received(set(), timeout=NOTHING_MOVES) == {}
    assert hooked.mta.queued_recipients() == set(RECIPIENTS)


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_bridge_not_answering_is_4xx_and_moves_nothing(
    lab: dict[str, LabMta], tmp_path: Path, name: str
) -> None:
    """A socket that accepts and never answers (a hung bridge): the kits' 5 s
    timeouts. (Postfix waits smtpd_policy_service_timeout, 100 s: not tested.)"""
    mta = lab[name]
    mta.reset()
    plugged = Hooked(mta, tmp_path)
    mta.inject()
    with hung_socket(plugged.socket):
        code, text = plugged.etrn("customer.test")
    assert 400 <= code < 500, (code, text)
    assert mta.wait_received(set(), timeout=NOTHING_MOVES) == {}


class hung_socket:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)

    def __enter__(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.listen(16)

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        os.unlink(self.path)


def test_postfix_domain_outside_fast_flush_domains(lab: dict[str, LabMta], tmp_path: Path) -> None:
    """noflush.test is not in the lab's main.cf fast_flush_domains (postqueue -s
    refuses it): the bridge flushes it with postqueue -i, and the kit's
    static:all on the hook's smtpd and flush daemon makes Postfix answer 250."""
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    plugged = Hooked(mta, tmp_path)
    plugged.start_bridge()
    try:
        code, text = plugged.etrn("noflush.test")
        assert (code, text) == (250, "Queuing started")
        expected = {"customer.test@noflush.test"}
        assert set(mta.wait_received(expected)) == expected
        [record] = plugged.records()
        assert (record["target"], record["pending"]) == ("noflush.test", 1)
    finally:
        plugged.stop_bridge()


def test_one_audit_record_per_request_on_a_connection(hooked: Hooked) -> None:
    """Several ETRNs on one SMTP connection: one record each, in order."""
    hooked.mta.inject()
    with smtplib.SMTP("127.0.0.1", hooked.port, local_hostname="client.test", timeout=60) as smtp:
        smtp.ehlo()
        codes = [smtp.docmd("ETRN", arg)[0] for arg in ("nothing.test", "customer.test", "x.test")]
    assert codes[0] == 459 and codes[2] == 459
    assert codes[1] in (250, 253)
    assert_exact_node_flush(hooked)
    records = hooked.records()
    assert [r["argument"] for r in records] == ["nothing.test", "customer.test", "x.test"]


@pytest.mark.parametrize("name", ["postfix", "exim", "sendmail"])
def test_doctor_checks_the_mta_side_of_the_hook(
    lab: dict[str, LabMta], tmp_path: Path, name: str
) -> None:
    """The lab's plugin-mode config is what the kit says: ready. A hook on a
    socket the MTA does not ask: a FIX line naming what to change (Postfix,
    Sendmail; Exim names the socket inside an ACL expansion, not checked)."""
    mta = lab[name]
    plugged = Hooked(mta, tmp_path)
    hook, _ = HOOKS[name]
    backend = dict(mta.backend_options)
    if name == "postfix":
        backend["flush_by_id"] = True
    if name == "sendmail":
        backend["args"] = ["-C", lab_env(name)["SENDMAIL_CONFIG"]]

    def doctor(socket_path: str) -> subprocess.CompletedProcess[str]:
        config = write_config(
            tmp_path,
            {"backend": backend, "hooks": {hook: {"listen": f"unix:{socket_path}"}}},
            "doctor.yaml",
        )
        return subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
            [sys.executable, "-m", "etrn_bridge", "doctor", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ready = doctor(plugged.socket)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert DOCTOR_OK[name] in ready.stdout
    if name == "exim":
        return  # the socket is named inside an ACL expansion: doctor does not follow it
    elsewhere = doctor(str(tmp_path / "other.sock"))
    assert elsewhere.returncode == 1, elsewhere.stdout
    assert "FIX" in elsewhere.stdout and DOCTOR_FIX[name] in elsewhere.stdout


DOCTOR_OK = {
    "postfix": "every domain is fast-flush eligible",
    "exim": "Exim's ETRN ACL: acl_check_etrn",
    "sendmail": "socketmap etrnpol asks local:",
}
DOCTOR_FIX = {
    "postfix": "no smtpd asks the bridge",
    "sendmail": "map etrnpol connects to",
}


def test_backend_failure_is_458_from_the_mta(mta: LabMta, tmp_path: Path) -> None:
    """The bridge cannot run the MTA's program: 458 reaches the client, nothing moves."""
    plugged = Hooked(mta, tmp_path)
    mta.inject()
    hook, group = HOOKS[mta.name]
    plugged.bridge = launch_bridge(
        tmp_path,
        {
            "backend": {**mta.backend_options, mta.program_option: str(tmp_path / "missing")},
            "hooks": {hook: {"listen": f"unix:{plugged.socket}", "group": group}},
            "policy": {"clients": [{"id": "lab", "networks": ["127.0.0.0/8"], "targets": ALLOWED}]},
        },
    )
    try:
        code, text = plugged.etrn("customer.test")
    finally:
        plugged.stop_bridge()
    assert code == 458, text
    assert "Unable to queue messages for node customer.test" in text
    assert mta.wait_received(set(), timeout=NOTHING_MOVES) == {}
    assert mta.queued_recipients() == set(RECIPIENTS)


def test_named_queue(hooked: Hooked) -> None:
    """Exim and Sendmail pass '#acme' through: the named queue / queue group is
    flushed. Postfix strips the '#': the bridge sees the node 'acme', not allowed."""
    mta = hooked.mta
    mta.inject()
    if mta.name != "postfix":
        mta.inject((QUEUED,), queue=NAMED_QUEUE)
    code, text = hooked.etrn("#" + NAMED_QUEUE)
    [record] = hooked.records()
    if mta.name == "postfix":
        assert code == 459, text
        assert (record["argument"], record["decision"]) == (NAMED_QUEUE, "deny")
        assert mta.wait_received(set(), timeout=NOTHING_MOVES) == {}
    else:
        assert (code, text) == (
            253,
            f"2.0.0 OK, 1 pending messages for node #{NAMED_QUEUE} started",
        )
        assert set(mta.wait_received({QUEUED})) == {QUEUED}
        assert record["target"] == "#" + NAMED_QUEUE
    assert mta.queued_recipients() == set(RECIPIENTS)


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_client_certificate_fingerprint_decides(
    lab: dict[str, LabMta], tmp_path: Path, name: str
) -> None:
    """STARTTLS with a client certificate on the MTA's port: the kit passes its
    SHA-256 fingerprint, and an entry's tls_fingerprints lets exactly that
    certificate flush. Another CA's certificate (the MTA asks for one, does not
    require it) and no certificate: 459."""
    mta = lab[name]
    mta.reset()
    mta.inject(tuple(sorted(NODE)))
    plugged = Hooked(mta, tmp_path)
    allowed = certificate_fingerprint(LAB_TLS / "client.pem")
    plugged.start_bridge(
        [{"id": "cert", "tls_fingerprints": [allowed], "targets": ["customer.test"]}]
    )
    try:
        refused = [plugged.etrn_over_tls(cert) for cert in ("stranger.pem", None)]
        assert mta.wait_received(set(), timeout=NOTHING_MOVES) == {}
        allowed_reply = plugged.etrn_over_tls("client.pem")
        assert set(mta.wait_received(NODE)) == NODE
        records = plugged.records()
    finally:
        plugged.stop_bridge()
    assert [code for code, _ in refused] == [459, 459]
    assert allowed_reply == (253, "2.0.0 OK, 2 pending messages for node customer.test started")
    assert [(r["tls_fingerprint"], r["rule"], r["reply"]) for r in records] == [
        (certificate_fingerprint(LAB_TLS / "stranger.pem"), None, 459),
        (None, None, 459),
        (allowed, "cert", 253),
    ]


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_auth_identity_decides(lab: dict[str, LabMta], tmp_path: Path, name: str) -> None:
    """AUTH PLAIN on the MTA's port as the lab's account "cust+etrn" (Sendmail's
    {auth_authen} carries it as xtext "cust+2Betrn", Exim's ACL as base64): an
    entry's users lets exactly that identity flush; without AUTH, 459."""
    mta = lab[name]
    mta.reset()
    mta.inject()
    env = lab_env(name)
    user, password = env[f"{name.upper()}_AUTH_USER"], env[f"{name.upper()}_AUTH_PASSWORD"]
    plugged = Hooked(mta, tmp_path)
    plugged.start_bridge([{"id": "auth", "users": [user], "targets": ["customer.test"]}])
    try:
        unauthenticated = plugged.etrn("customer.test")
        assert mta.wait_received(set(), timeout=NOTHING_MOVES) == {}
        authenticated = plugged.etrn("customer.test", login=(user, password))
        assert_exact_node_flush(plugged)
        records = plugged.records()
    finally:
        plugged.stop_bridge()
    assert unauthenticated[0] == 459, unauthenticated
    assert authenticated == (253, "2.0.0 OK, 2 pending messages for node customer.test started")
    assert [(r["auth_user"], r["rule"]) for r in records] == [(None, None), (user, "auth")]
    assert records[1]["client_port"] == plugged.client_port
