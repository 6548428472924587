"""``etrn-bridge send`` against a running bridge: replies and exit statuses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bridgekit import Bridge, TlsFiles, run_send

from etrn_bridge.frontends.passwords import hash_password


def send(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    return run_send(bridge.port, *args)


def test_all_started_exits_0(bridge: Bridge) -> None:
    result = send(bridge, "127.0.0.1", "customer.example", "@customer.net")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "customer.example: 250 2.0.0 OK, queuing for node customer.example started",
        "@customer.net: 250 2.0.0 OK, queuing for node @customer.net started",
    ]
    assert [r["argument"] for r in bridge.etrn_records()] == ["customer.example", "@customer.net"]


def test_one_refused_exits_1(bridge: Bridge) -> None:
    result = send(bridge, "127.0.0.1", "customer.example", "other.example", "bad;name")
    assert result.returncode == 1
    codes = [line.split()[1] for line in result.stdout.splitlines()]
    assert codes == ["250", "459", "501"]


def test_connection_refused_exits_2(bridge: Bridge) -> None:
    port = bridge.port
    bridge.stop()
    result = run_send(port, "127.0.0.1", "x.example")
    assert result.returncode == 2
    assert "send:" in result.stderr


def test_starttls_and_auth(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text(f"carol:{hash_password('pw-carol')}\n")
    bridge = start_bridge({"tls": tls_files.config(), "auth": {"passwords_file": str(passwords)}})
    secret = tmp_path / "secret"
    secret.write_text("pw-carol\n")
    common = ["--starttls", "--cafile", str(tls_files.ca_file), "--user", "carol"]
    # The server certificate names 127.0.0.1, so it verifies by address.
    ok = send(bridge, *common, "--password-file", str(secret), "127.0.0.1", "customer.example")
    assert ok.returncode == 0, ok.stderr
    record = bridge.etrn_records()[-1]
    assert (record["auth_user"], record["tls"]) == ("carol", True)

    secret.write_text("wrong\n")
    bad = send(bridge, *common, "--password-file", str(secret), "127.0.0.1", "customer.example")
    assert bad.returncode == 2 and "535" in bad.stderr


def test_untrusted_certificate_exits_2(
    start_bridge: Callable[..., Bridge], tls_files: TlsFiles
) -> None:
    bridge = start_bridge({"tls": tls_files.config()})
    result = send(bridge, "--starttls", "127.0.0.1", "customer.example")
    assert result.returncode == 2 and "certificate" in result.stderr.lower()
    insecure = send(bridge, "--starttls", "--insecure", "127.0.0.1", "customer.example")
    assert insecure.returncode == 0


def test_etrn_not_advertised_exits_2(tmp_path: Path) -> None:
    # A plain SMTP server without ETRN: aiosmtpd's own, on loopback.
    script = tmp_path / "plain_smtp.py"
    script.write_text(
        "import asyncio, sys\n"
        "from aiosmtpd.smtp import SMTP\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    server = await loop.create_server(lambda: SMTP(None), '127.0.0.1', 0)\n"
        "    print(server.sockets[0].getsockname()[1], flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        result = subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
            [sys.executable, "-m", "etrn_bridge", "send", "--port", port, "127.0.0.1", "x.example"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        server.kill()
    assert result.returncode == 2
    assert "does not advertise ETRN" in result.stderr
