"""A Postfix policy server that answers ``action=OK`` and does nothing else.

    python bench/stub_policy.py SOCKET_PATH [SPIN_MICROSECONDS]

The floor for ``bench/hooks.py``: what plugin mode costs on this machine with
a policy service that spends no work at all per request (no decision, no
audit, no log line), so the bridge's own share of the gap to native can be
told from the share Postfix and the clients pay for any policy round trip.
With SPIN_MICROSECONDS it spins that long on the CPU before each answer: a
stand-in for a policy server's own CPU per request, to see what that costs
Postfix on the same cores. Bench only: it allows everything, and its socket is
open to every user.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

END_OF_REQUEST = b"\n\n"
ANSWER = b"action=OK\n\n"


SPIN = float(sys.argv[2]) / 1e6 if len(sys.argv) > 2 else 0.0


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(END_OF_REQUEST)
            spun_until = time.perf_counter() + SPIN
            while time.perf_counter() < spun_until:
                pass
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(answer, path)
    os.chmod(path, 0o666)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
