"""The systemd service protocol without libsystemd: sd_notify(3) and sd_listen_fds(3).

Both are plain sockets: notifications are datagrams of ``KEY=VALUE`` lines
sent to ``$NOTIFY_SOCKET``; socket activation hands listening sockets over as
file descriptors 3, 4, ... announced by ``$LISTEN_FDS`` for ``$LISTEN_PID``.
Outside systemd (no such variables) every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

# sd_listen_fds(3): passed descriptors start right after stdin, stdout, stderr.
SD_LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
NOTIFY_VARIABLE = "NOTIFY_SOCKET"

log = logging.getLogger("etrn_bridge.systemd")


class Notifier:
    """Sends sd_notify(3) state changes to the service manager, if there is one."""

    def __init__(self, address: str | None) -> None:
        self.address = _unix_address(address) if address else None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The manager's socket, taken out of the environment so that the MTA
        programs the backends run do not inherit it (sd_notify's unset_environment)."""
        return cls(environ.pop(NOTIFY_VARIABLE, None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def silence(self) -> None:
        """Send nothing from now on (a forked worker: only the main process may speak)."""
        self.address = None

    def notify(self, **fields: str) -> None:
        """One datagram with ``KEY=VALUE`` lines; a failure is logged, never raised:
        losing a status line must not stop the mail service."""
        if self.address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait on a busy manager: this runs in the event loop.
                sock.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.notify(READY="1", STATUS=status)

    def reloading(self) -> None:
        # systemd >= 253 wants the CLOCK_MONOTONIC time of the reload request
        # with RELOADING=1 (Type=notify-reload); older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(RELOADING="1", MONOTONIC_USEC=str(usec), STATUS="reloading")

    def stopping(self) -> None:
        self.notify(STOPPING="1", STATUS="stopping: draining sessions and flushes")

    def status(self, text: str) -> None:
        self.notify(STATUS=text)


def _unix_address(address: str) -> str | bytes:
    """``@name`` is a Linux abstract socket: a leading NUL byte instead of the '@'."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")
    if not address.startswith("/"):
        raise OSError(f"${NOTIFY_VARIABLE}: unsupported address {address!r}")
    return address


def listen_fds(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets the service manager passed (socket activation), or [].

    The variables are removed from the environment either way, so that no
    program the bridge runs mistakes the descriptors for its own.
    """
    passed = {name: environ.pop(name) for name in LISTEN_VARIABLES if name in environ}
    if passed.get("LISTEN_PID") != str(os.getpid()):
        return []  # absent, or meant for another process (e.g. a wrapper's)
    try:
        count = int(passed.get("LISTEN_FDS", "0"))
    except ValueError:
        raise OSError(f"LISTEN_FDS is not a number: {passed['LISTEN_FDS']!r}") from None
    names = passed.get("LISTEN_FDNAMES", "").split(":")
    sockets: list[socket.socket] = []
    try:
        for index, fd in enumerate(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)):
            name = names[index] if index < len(names) and names[index] else f"fd {fd}"
            sockets.append(_listening_socket(fd, name))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listening_socket(fd: int, name: str) -> socket.socket:
    os.set_inheritable(fd, False)  # sd_listen_fds(3) sets FD_CLOEXEC: no MTA program gets it
    sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    is_listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not is_listening:
        sock.detach()  # not ours to close
        raise OSError(f"passed socket {name} (fd {fd}) is not a listening stream socket")
    sock.setblocking(False)
    return sock


def status_line(counts: Mapping[str, int]) -> str:
    """``STATUS=`` text for ``systemctl status``: requests so far, by how they ended."""
    total = sum(counts.values())
    parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()) if count)
    return f"{total} request{'' if total == 1 else 's'}" + (f" ({parts})" if parts else "")
