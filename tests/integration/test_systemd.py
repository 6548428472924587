"""systemd integration with the real tools: the unit files pass ``systemd-analyze
verify``; ``systemd-socket-activate`` hands a real ``serve`` its listening
socket (no root in the daemon, even for a privileged port); the sd_notify
protocol (READY, RELOADING, STOPPING, STATUS) arrives on a real unix datagram
socket, from the main process, at a path or an abstract address.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bridgekit import (
    BASE_CONFIG,
    REPO_ROOT,
    Bridge,
    SmtpClient,
    merge_config,
    require_program,
    write_config,
)

UNITS = REPO_ROOT / "systemd"
UNIT_FILES = ("etrn-bridge.service", "etrn-bridge.socket")
DROP_IN = "setuid-mta.conf"
# Where the shipped unit expects the console script (README "Install on a server").
SHIPPED_COMMAND = "/opt/etrn-bridge/bin/etrn-bridge"
NOTIFY_TIMEOUT = 10.0
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (SCM_CREDENTIALS)


# systemd-analyze verify ------------------------------------------------------------


def verify(directory: Path, *units: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of units in ``directory`` (drop-ins are found
    there too). Works without systemd as PID 1. ``--man=no``: the man page is
    checked by the packaging test, and man-db is not needed for this one."""
    analyze = require_program("systemd-analyze")
    return subprocess.run(
        [analyze, "verify", "--man=no", *(str(directory / unit) for unit in units)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"},
        cwd=directory,
        check=False,
    )


def installed_units(tmp_path: Path, drop_in: bool = False) -> Path:
    """The shipped units in a directory of their own, the command pointed at this
    test's console script (verify checks that ExecStart is executable)."""
    directory = tmp_path / "units"
    directory.mkdir()
    for name in UNIT_FILES:
        text = (UNITS / name).read_text()
        command = str(Path(sys.executable).parent / "etrn-bridge")
        (directory / name).write_text(text.replace(SHIPPED_COMMAND, command))
    if drop_in:
        (directory / "etrn-bridge.service.d").mkdir()
        shutil.copy(UNITS / DROP_IN, directory / "etrn-bridge.service.d" / DROP_IN)
    return directory


def test_units_verify_clean(tmp_path: Path) -> None:
    assert SHIPPED_COMMAND in (UNITS / "etrn-bridge.service").read_text()
    done = verify(installed_units(tmp_path), *UNIT_FILES)
    assert (done.returncode, done.stderr) == (0, "")


def test_setuid_mta_drop_in_verifies_clean(tmp_path: Path) -> None:
    done = verify(installed_units(tmp_path, drop_in=True), "etrn-bridge.service")
    assert (done.returncode, done.stderr) == (0, "")


# systemd-analyze's exposure score, 0 (locked down) to 10, times ten: "OK" is below 2.0.
EXPOSURE_THRESHOLD = 20


def test_hardening_exposure_is_ok(tmp_path: Path) -> None:
    """``systemd-analyze security --offline`` rates the unit's hardening: it stays
    in systemd's "OK" band (the Postfix setup, all hardening on)."""
    directory = installed_units(tmp_path)
    done = subprocess.run(
        [
            require_program("systemd-analyze"),
            "security",
            "--offline=true",
            "--man=no",
            f"--threshold={EXPOSURE_THRESHOLD}",
            str(directory / "etrn-bridge.service"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"},
        cwd=directory,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-300:]
    assert "Overall exposure level for etrn-bridge.service" in done.stdout


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt setting is reported."""
    directory = installed_units(tmp_path)
    service = directory / "etrn-bridge.service"
    service.write_text(service.read_text().replace("ProtectSystem=", "ProtectSystm="))
    done = verify(directory, "etrn-bridge.service")
    assert "ProtectSystm" in done.stderr


# Socket activation ----------------------------------------------------------------


def free_port(low: int = 0) -> int:
    """A free loopback port: any (0), or the first free one from ``low`` up."""
    for port in range(low, 1024) if low else [0]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = probe.getsockname()[1]
            return found
    raise AssertionError("no free privileged port")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged daemon can read its config from and write its
    audit to (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="etrn-bridge-activation-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def start_activated(
    directory: Path, port: int, config: dict[str, object], *prefix: str
) -> subprocess.Popen[str]:
    """``systemd-socket-activate`` binds 127.0.0.1:port and, at the first
    connection (as systemd does), execs ``prefix... python -m etrn_bridge
    serve`` in the same pid, so LISTEN_PID matches."""
    config_path = write_config(directory, merge_config(BASE_CONFIG, config))
    config_path.chmod(0o644)
    process = subprocess.Popen(
        [
            require_program("systemd-socket-activate"),
            "--listen",
            f"127.0.0.1:{port}",
            "--fdname",
            "etrn",
            *prefix,
            sys.executable,
            "-m",
            "etrn_bridge",
            "serve",
            "-c",
            str(config_path),
        ],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    bound = process.stderr.readline()
    assert bound.startswith(f"Listening on 127.0.0.1:{port}"), bound
    return process


def wait_ready(process: subprocess.Popen[str]) -> list[str]:
    """stderr lines up to the ready line (the process must still run)."""
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if "ready, listening on" in line:
            return lines
    raise AssertionError("serve ended before it was ready:\n" + "\n".join(lines))


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()


def etrn(port: int, argument: str) -> int:
    client = SmtpClient("127.0.0.1", port)
    try:
        assert client.greeting.code == 220
        assert client.ehlo().code == 250
        return client.command(f"ETRN {argument}").code
    finally:
        client.close()


def test_socket_activation_serves_etrn_on_the_passed_socket(shared_dir: Path) -> None:
    activated, configured = free_port(), free_port()
    config = {"listen": [f"127.0.0.1:{configured}"], "audit": {"file": "audit.jsonl"}}
    process = start_activated(shared_dir, activated, config)
    try:
        # This first connection starts the bridge; it waits in the socket's backlog.
        assert etrn(activated, "customer.example") == 250
        lines = wait_ready(process)
        assert any("socket activation: 1 sockets" in line for line in lines), lines
        assert lines[-1].endswith(f"ready, listening on 127.0.0.1:{activated}")
        assert etrn(activated, "other.example") == 459
        with socket.socket() as probe:  # listen: is not used when sockets are passed
            assert probe.connect_ex(("127.0.0.1", configured)) != 0
    finally:
        assert stop(process) == 0
    audit = (shared_dir / "audit.jsonl").read_text()
    assert audit.count('"event":"etrn"') == 2


def unprivileged(setpriv: str) -> tuple[str, ...]:
    """A setpriv prefix that runs serve without any privilege: as nobody, or, when
    nobody cannot read this checkout (one under /root), as uid 0 stripped of
    every capability (root's power is its capabilities; file access stays)."""
    as_nobody = (setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    probe = [*as_nobody, sys.executable, "-c", "import etrn_bridge.cli"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return as_nobody
    return (setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs")


def test_socket_activation_privileged_port_without_privileges(shared_dir: Path) -> None:
    """The manager binds a port below 1024; the daemon has no privilege from exec on."""
    if os.geteuid() != 0:
        pytest.skip("binding a privileged port needs root (as systemd has)")
    prefix = unprivileged(require_program("setpriv"))
    nobody = pwd.getpwnam("nobody")
    as_nobody = "--reuid=nobody" in prefix
    if as_nobody:  # where it writes its audit
        os.chown(shared_dir, nobody.pw_uid, nobody.pw_gid)
    port = free_port(low=600)
    # setpriv execs in place: the pid, and so LISTEN_PID, stays the same.
    process = start_activated(shared_dir, port, {"audit": {"file": "audit.jsonl"}}, *prefix)
    try:
        assert etrn(port, "customer.example") == 250
        wait_ready(process)
        status = Path(f"/proc/{process.pid}/status").read_text()
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status  # no capability at all
        if as_nobody:
            assert re.search(rf"^Uid:\s+{nobody.pw_uid}\s+{nobody.pw_uid}\s", status, re.M)
    finally:
        assert stop(process) == 0
    assert etrn_records(shared_dir / "audit.jsonl") == 1


def etrn_records(audit: Path) -> int:
    return audit.read_text().count('"event":"etrn"')


def test_passed_socket_that_is_not_listening_is_refused(shared_dir: Path) -> None:
    """LISTEN_FDS naming a descriptor that is no listening socket: serve refuses to start."""
    config_path = write_config(shared_dir, BASE_CONFIG)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        datagram.set_inheritable(True)
        code = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] ="
            " str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; from etrn_bridge.cli import"
            " main; sys.exit(main(['serve', '-c', sys.argv[2]]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(datagram.fileno()), str(config_path)],
            pass_fds=(datagram.fileno(),),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert "is not a listening stream socket" in done.stderr


# sd_notify ------------------------------------------------------------------------


class NotifySocket:
    """The service manager's end: a unix datagram socket that learns each sender's pid."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(NOTIFY_TIMEOUT)

    def receive(self) -> tuple[dict[str, str], int]:
        """One message as a dict, and the pid the kernel says sent it."""
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pid = next(
            UCRED.unpack(payload[: UCRED.size])[0]
            for level, kind, payload in ancillary
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        )
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return fields, pid

    def wait_for(self, key: str) -> tuple[dict[str, str], int]:
        deadline = time.monotonic() + NOTIFY_TIMEOUT
        while time.monotonic() < deadline:
            fields, pid = self.receive()
            if key in fields:
                return fields, pid
        raise AssertionError(f"no {key} notification")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifySocket]:
    """NOTIFY_SOCKET for the bridges this test starts: a file, or an '@' abstract name."""
    address = str(tmp_path / "notify") if request.param == "path" else f"@etrn-{uuid.uuid4()}"
    receiver = NotifySocket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield receiver
    receiver.close()


def test_notify_ready_reloading_stopping(
    notify_socket: NotifySocket, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge()
    ready, sender = notify_socket.wait_for("READY")
    assert sender == bridge.process.pid  # NotifyAccess=main accepts only the main pid
    assert ready["READY"] == "1"
    assert ready["STATUS"] == f"listening on 127.0.0.1:{bridge.port}"

    client = bridge.session()
    assert client.command("ETRN customer.example").code == 250
    assert client.command("ETRN other.example").code == 459
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    bridge.send_signal(signal.SIGHUP)
    reloading, sender = notify_socket.wait_for("RELOADING")
    assert (reloading["RELOADING"], sender) == ("1", bridge.process.pid)
    # CLOCK_MONOTONIC in microseconds, taken when the reload began (systemd >= 253).
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    reloaded, _ = notify_socket.wait_for("READY")
    assert reloaded["STATUS"] == "reloaded; 2 requests (1 denied, 1 started)"

    bridge.send_signal(signal.SIGTERM)
    stopping, sender = notify_socket.wait_for("STOPPING")
    assert (stopping["STOPPING"], sender) == ("1", bridge.process.pid)
    assert bridge.process.wait(15) == 0


def test_notify_failed_reload_says_so(
    notify_socket: NotifySocket, start_bridge: Callable[..., Bridge]
) -> None:
    bridge = start_bridge()
    notify_socket.wait_for("READY")
    bridge.config_path.write_text("listen: [\n")  # broken YAML
    bridge.send_signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING")
    reloaded, _ = notify_socket.wait_for("READY")
    assert reloaded["STATUS"].startswith("reload FAILED, previous policy in force")


def test_notify_with_workers_comes_from_the_supervisor(
    notify_socket: NotifySocket, start_bridge: Callable[..., Bridge]
) -> None:
    """Only the parent speaks (it is systemd's main process); workers stay quiet."""
    bridge = start_bridge({"workers": 2})
    ready, sender = notify_socket.wait_for("READY")
    assert (sender, ready["STATUS"]) == (bridge.process.pid, "2 workers")
    bridge.send_signal(signal.SIGTERM)
    _, sender = notify_socket.wait_for("STOPPING")
    assert sender == bridge.process.pid
    assert bridge.process.wait(15) == 0
    notify_socket.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # nothing from a worker (a second READY or STOPPING)
        notify_socket.receive()


def test_children_inherit_neither_notify_socket_nor_listen_fds(
    notify_socket: NotifySocket, start_bridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    """The MTA programs a backend runs must not talk to systemd in the bridge's name."""
    dump = tmp_path / "environment"
    script = f"import os; open({str(dump)!r}, 'w').write(repr(sorted(os.environ)))"
    bridge = start_bridge({"backend": {"type": "command", "argv": [sys.executable, "-c", script]}})
    notify_socket.wait_for("READY")
    assert bridge.session().command("ETRN customer.example").code == 250
    names = dump.read_text()
    assert "NOTIFY_SOCKET" not in names and "LISTEN_" not in names
