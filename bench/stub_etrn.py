"""An ETRN server that asks Postfix's flush(8) and does nothing else.

    python bench/stub_etrn.py PORT FLUSH_SOCKET [--aiosmtpd]

The floor for ``bench/queue_scale.py --floor``: what a flood of ETRN costs on
this machine when a Python process, not Postfix's smtpd, answers it and asks
flush(8) the same ``send_site`` question (the bridge's own client for it),
with no policy, no queue index and no audit. By default the SMTP side is a bare
asyncio Protocol; ``--aiosmtpd`` serves it with aiosmtpd's SMTP class, as the
bridge does. The gap between these rows and Postfix's own ETRN is what any
Python front end pays here; the gap between them and the bridge is the
bridge's own. Bench only: it flushes whatever it is asked, answers 250 to every
other command (aiosmtpd: its own replies), and serves 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etrn_bridge.backends.postfix_flush import STATUS_OK, send_site

FLUSH_TIMEOUT = 60.0


class EtrnSession(asyncio.Protocol):
    def __init__(self, flush_socket: str) -> None:
        self.flush_socket = flush_socket
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.flushes: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 stub.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.received += data
        while b"\r\n" in self.received:
            line, self.received = self.received.split(b"\r\n", 1)
            self.command(line.decode("ascii", "replace"))

    def command(self, line: str) -> None:
        assert self.transport is not None
        verb, _, argument = line.partition(" ")
        if verb.upper() == "ETRN":
            flush = asyncio.get_running_loop().create_task(self.etrn(argument))
            self.flushes.add(flush)
            flush.add_done_callback(self.flushes.discard)
        elif verb.upper() == "QUIT":
            self.transport.write(b"221 2.0.0 bye\r\n")
            self.transport.close()
        else:
            self.transport.write(b"250 stub.test\r\n")

    async def etrn(self, site: str) -> None:
        reply = await send_site(self.flush_socket, site, FLUSH_TIMEOUT)
        if self.transport is not None and not self.transport.is_closing():
            ok = reply.status == STATUS_OK
            self.transport.write(b"250 2.0.0 started\r\n" if ok else b"458 4.3.0 failed\r\n")


class AiosmtpdEtrnSession(SMTP):
    def __init__(self, flush_socket: str) -> None:
        super().__init__(None, hostname="stub.test", loop=asyncio.get_running_loop())
        self.flush_socket = flush_socket

    async def smtp_ETRN(self, arg: str | None) -> None:
        reply = await send_site(self.flush_socket, arg or "", FLUSH_TIMEOUT)
        await self.push("250 2.0.0 started" if reply.status == STATUS_OK else "458 4.3.0 failed")


async def main(port: int, flush_socket: str, use_aiosmtpd: bool) -> None:
    loop = asyncio.get_running_loop()
    session = AiosmtpdEtrnSession if use_aiosmtpd else EtrnSession
    server = await loop.create_server(lambda: session(flush_socket), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], "--aiosmtpd" in sys.argv[3:]))
