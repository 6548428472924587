"""Sendmail's socketmap, looked up by the kit's ``check_etrn`` ruleset (sendmail/README.md).

Protocol (Sendmail op.me "socket map"; netstrings, D. J. Bernstein): the
request is ``<len>:<map name> <key>,``, the answer ``<len>:OK <value>,``,
``NOTFOUND``, ``TEMP``, ``TIMEOUT`` or ``PERM``; Sendmail keeps the
connection for many lookups. The kit's key is ``<client address>/<argument>``
(``$&{client_addr} / $1``; the map is declared ``-f`` so the argument keeps
its case, and Sendmail passes ``@``/``#`` as sent).

The value is ``PASS``, ``DENY`` or ``FAIL`` and the bridge's reply in quotes
(one token for the ruleset, so its spaces survive); the ruleset answers it
through ``$#error``, which makes Sendmail print exactly that line and skip its
own substring queue run (srvrsmtp.c: Errors > 0).
"""

from __future__ import annotations

from etrn_bridge import replies
from etrn_bridge.frontends.hookserver import HookConnection, HookProtocol, RequestError
from etrn_bridge.request import Identity

FRONTEND = "sendmail-socketmap"
# Sendmail's lookups are short (MAXNAME-sized keys); a netstring's length is at
# most this many digits, its data at most MAX_REQUEST bytes.
MAX_REQUEST = 8192
MAX_LENGTH_DIGITS = len(str(MAX_REQUEST))
KEY_SEPARATOR = "/"  # never in an address; the argument after it is kept whole
IPV6_PREFIX = "ipv6:"  # Sendmail writes IPv6 client addresses as "IPv6:2001:db8::1"


class SendmailSocketmap(HookProtocol):
    max_request = MAX_REQUEST

    def __init__(self, map_name: str) -> None:
        self.map_name = map_name

    async def serve(self, connection: HookConnection) -> None:
        while (lookup := await read_netstring(connection)) is not None:
            await connection.answer(netstring(await self.answer(connection, lookup)))

    async def answer(self, connection: HookConnection, lookup: str) -> str:
        name, space, key = lookup.partition(" ")
        if not space or name != self.map_name:
            return f"PERM unknown map {name[:64]!r}"
        address, separator, argument = key.partition(KEY_SEPARATOR)
        if not separator:  # no client address: the service refuses it (and audits)
            address, argument = "", key
        if address.lower().startswith(IPV6_PREFIX):
            address = address[len(IPV6_PREFIX) :]
        outcome = await connection.handle(argument, Identity(address=address), FRONTEND)
        reply = replies.reply_for(outcome)
        quoted = reply.replace('"', "'")  # no reply text has one; a quote would end the token
        return f'OK {answer_word(reply)} "{quoted}"'


def answer_word(reply: str) -> str:
    if reply.startswith("2"):
        return "PASS"
    if reply.startswith("458"):
        return "FAIL"
    return "DENY"


async def read_netstring(connection: HookConnection) -> str | None:
    """The next netstring's data; None when Sendmail closed or went idle."""
    header = await connection.read_until(b":", first=True)
    if header is None:
        return None
    digits = header[:-1]
    if len(digits) > MAX_LENGTH_DIGITS:
        raise RequestError(f"request longer than {MAX_REQUEST} bytes")
    if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
        raise RequestError("not a netstring length")
    length = int(digits)
    if length > MAX_REQUEST:
        raise RequestError(f"request longer than {MAX_REQUEST} bytes")
    data = await connection.read_exactly(length + 1)
    if data[-1:] != b",":
        raise RequestError("netstring not terminated by ','")
    return data[:-1].decode("utf-8", "surrogateescape")


def netstring(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return str(len(data)).encode() + b":" + data + b","
