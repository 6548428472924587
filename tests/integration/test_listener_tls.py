"""STARTTLS, AUTH PLAIN/LOGIN and client certificates, with trustme certificates."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from bridgekit import Bridge, SmtpClient, TlsFiles

from etrn_bridge.frontends.passwords import hash_password

PASSWORD = "correct horse battery staple"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


@pytest.fixture
def passwords_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    path.write_text(
        f"# AUTH users\nalice:{hash_password(PASSWORD)}\nbob:{hash_password(PASSWORD, 'argon2')}\n"
    )
    return path


@pytest.fixture
def tls_bridge(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles, passwords_file: Path
) -> Bridge:
    return start_bridge(
        {"tls": tls_files.config(), "auth": {"passwords_file": str(passwords_file)}}
    )


def tls_session(bridge: Bridge, tls_files: TlsFiles, certificate: bool = False) -> SmtpClient:
    client = bridge.session()
    assert client.starttls(tls_files.client_context(certificate)).code == 220
    return client


def test_starttls_offered_and_auth_only_after_tls(tls_bridge: Bridge, tls_files: TlsFiles) -> None:
    client = tls_bridge.connect()
    before = client.ehlo()
    assert before.lines == ["250-bridge.test", "250-ETRN", "250 STARTTLS"]
    assert client.command("AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}")).code == 538
    assert client.starttls(tls_files.client_context()).code == 220
    after = client.ehlo()
    assert after.lines == ["250-bridge.test", "250-ETRN", "250 AUTH PLAIN LOGIN"]
    assert client.command("STARTTLS").text == "503 5.5.1 TLS already active"


def test_auth_plain_then_etrn_is_audited_with_user_and_tls(
    tls_bridge: Bridge, tls_files: TlsFiles
) -> None:
    client = tls_session(tls_bridge, tls_files)
    assert client.ehlo().code == 250
    assert client.command("AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}")).code == 235
    assert client.command("ETRN customer.example").code == 250
    (record,) = tls_bridge.etrn_records()
    assert record["auth_user"] == "alice"
    assert record["tls"] is True
    assert record["tls_fingerprint"] is None  # no client_ca configured


def test_auth_login_with_argon2_hash(tls_bridge: Bridge, tls_files: TlsFiles) -> None:
    client = tls_session(tls_bridge, tls_files)
    client.ehlo()
    assert client.command("AUTH LOGIN").code == 334
    assert client.command(b64("bob")).code == 334
    assert client.command(b64(PASSWORD)).code == 235
    client.command("ETRN customer.example")
    assert tls_bridge.etrn_records()[0]["auth_user"] == "bob"


@pytest.mark.parametrize(
    "credentials",
    [f"\0alice\0{PASSWORD}x", f"\0mallory\0{PASSWORD}", "\0alice\0", f"\0ALICE\0{PASSWORD}"],
)
def test_wrong_credentials_get_535(
    tls_bridge: Bridge, tls_files: TlsFiles, credentials: str
) -> None:
    client = tls_session(tls_bridge, tls_files)
    client.ehlo()
    reply = client.command("AUTH PLAIN " + b64(credentials))
    assert reply.text == "535 5.7.8 Authentication credentials invalid"
    client.command("ETRN customer.example")
    assert tls_bridge.etrn_records()[0]["auth_user"] is None


def test_failed_auth_counts_as_bad_command(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles, passwords_file: Path
) -> None:
    bridge = start_bridge(
        {
            "tls": tls_files.config(),
            "auth": {"passwords_file": str(passwords_file)},
            "session": {"max_bad_commands": 2},
        }
    )
    client = tls_session(bridge, tls_files)
    client.ehlo()
    assert client.command("AUTH PLAIN " + b64("\0alice\0guess1")).code == 535
    assert client.command("AUTH PLAIN " + b64("\0alice\0guess2")).code == 535
    assert client.read_reply().code == 421
    assert client.is_closed()


def test_client_certificate_fingerprint_reaches_the_audit(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles
) -> None:
    bridge = start_bridge({"tls": tls_files.config(client_ca=True)})
    with_cert = tls_session(bridge, tls_files, certificate=True)
    with_cert.ehlo()
    assert with_cert.command("ETRN customer.example").code == 250
    without_cert = tls_session(bridge, tls_files)
    without_cert.ehlo()
    assert without_cert.command("ETRN customer.example").code == 250
    first, second = bridge.etrn_records()
    assert first["tls_fingerprint"] == tls_files.client_fingerprint()
    assert first["tls_fingerprint"].startswith("sha256:")
    assert second["tls_fingerprint"] is None and second["tls"] is True


def test_certificate_from_another_ca_is_refused(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles
) -> None:
    import trustme

    bridge = start_bridge({"tls": tls_files.config(client_ca=True)})
    stranger = trustme.CA().issue_cert("stranger.example")
    context = tls_files.client_context()
    stranger.configure_cert(context)
    client = bridge.session()
    client.command("STARTTLS")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls = context.wrap_socket(client.sock, server_hostname="bridge.test")
        tls.sendall(b"EHLO x\r\n")
        assert tls.recv(100) == b""  # TLS 1.3: the alert arrives after the handshake
        raise ConnectionError("closed")
    assert bridge.etrn_records() == []


def test_plaintext_password_file_is_refused_at_start(tmp_path: Path, tls_files: TlsFiles) -> None:
    from bridgekit import BASE_CONFIG, merge_config, run_bridge_process, write_config

    passwords = tmp_path / "plain"
    passwords.write_text("alice:secret\n")
    config = merge_config(
        BASE_CONFIG, {"tls": tls_files.config(), "auth": {"passwords_file": str(passwords)}}
    )
    process = run_bridge_process(write_config(tmp_path, config))
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"{passwords}:1" in stderr and "plaintext" in stderr
