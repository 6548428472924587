"""An ETRN flood, shared by bench/queue_scale.py and bench/index_flood.py: the
client side, and the CPU the server spent on it.

One thread sends an ETRN on every session at once, then reads the replies with
a selector: each reply is timed from its own command's send, the way a customer
host would see it, and no client thread's scheduling gets in between.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Sequence
from pathlib import Path

Replies = dict[socket.socket, tuple[float, bytes]]


def read_reply(sock: socket.socket) -> bytes:
    """One whole SMTP reply (the last line has a space after the code)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


def etrn_flood(
    sessions: Sequence[socket.socket], targets: Sequence[str], timeout: float
) -> Replies:
    """Send ``ETRN target`` on each session (after EHLO), all at once; each session's
    reply line(s) and the seconds from its send to its reply."""
    selector = selectors.DefaultSelector()
    for sock in sessions:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, bytearray())
    sent: dict[socket.socket, float] = {}
    replies: Replies = {}
    try:
        for sock, target in zip(sessions, targets, strict=True):
            sent[sock] = time.monotonic()
            sock.sendall(f"ETRN {target}\r\n".encode())
        while len(replies) < len(sessions):
            for key, _ in selector.select(timeout=timeout):
                now = time.monotonic()
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("connection closed before the ETRN reply")
                key.data.extend(chunk)
                if key.data.endswith(b"\r\n"):
                    replies[sock] = (now - sent[sock], bytes(key.data))
                    selector.unregister(sock)
    finally:
        selector.close()
    return replies


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of ``pid`` and its children (the workers): of all their threads, and
    of their main threads alone (the event loops). From /proc/PID/task/TID/schedstat
    (nanoseconds on the CPU, proc(5)): /proc/PID/stat counts whole clock ticks,
    10 ms, too coarse for one flood."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids += [int(child) for child in children.read_text().split()]
    total = loops = 0
    for one in pids:
        for task in Path(f"/proc/{one}/task").iterdir():
            try:
                nanoseconds = int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
            total += nanoseconds
            if task.name == str(one):
                loops += nanoseconds
    return total / 1e9, loops / 1e9
