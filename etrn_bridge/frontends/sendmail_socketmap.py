"""Sendmail's socketmap, looked up by the kit's ``check_etrn`` ruleset (sendmail/README.md).

Protocol (Sendmail op.me "socket map"; netstrings, D. J. Bernstein): the
request is ``<len>:<map name> <key>,``, the answer ``<len>:OK <value>,``,
``NOTFOUND``, ``TEMP``, ``TIMEOUT`` or ``PERM``; Sendmail keeps the
connection for many lookups.

The key is five fields, each in angle brackets, built by the kit's ruleset:

    <{client_addr}><{client_port}><{cert_fp}><{auth_authen}><argument>

Sendmail tokenises each macro and joins the tokens back, so ``<``/``>`` never
appear inside the first four fields: the address, port and fingerprint are
Sendmail's own text, ``{auth_authen}`` is xtext (savemail.c xtextify: ``+``,
backslash, ``(``, ``<>")=`` and all but printable ASCII as ``+XX``). The argument
is last and whole (the map is declared ``-f``, so it keeps its case; ``@``/``#``
arrive as sent). Sendmail silently cuts a key at 1024 bytes (MAXKEY): a key
not ending in ``>`` was cut in the argument, refused 501. Sendmail has no
macro with the HELO name before MAIL (``$s`` is set there), so none is sent.

The value is ``PASS``, ``DENY`` or ``FAIL`` and the bridge's reply in quotes
(one token for the ruleset, so its spaces survive); the ruleset answers it
through ``$#error``, which makes Sendmail print exactly that line and skip its
own substring queue run (srvrsmtp.c: Errors > 0).
"""

from __future__ import annotations

import re

from etrn_bridge import replies
from etrn_bridge.frontends.hookserver import HookProtocol, HookRequest, RequestError, port_field
from etrn_bridge.frontends.tlsinfo import fingerprint_from_hex
from etrn_bridge.request import Identity, Outcome

FRONTEND = "sendmail-socketmap"
# Sendmail's lookups are short (MAXNAME-sized keys); a netstring's length is at
# most this many digits, its data at most MAX_REQUEST bytes.
MAX_REQUEST = 8192
MAX_LENGTH_DIGITS = len(str(MAX_REQUEST))
# How the kit's ruleset writes the key (sendmail.mc.plugin.snippet); doctor looks for it.
RULESET_KEY = "< $&{client_addr} > < $&{client_port} > < $&{cert_fp} > < $&{auth_authen} > < $1 >"
IPV6_PREFIX = "ipv6:"  # Sendmail writes IPv6 client addresses as "IPv6:2001:db8::1"
# The four identity fields of the key, then "<" and the argument.
IDENTITY_FIELDS = re.compile(r"<([^<>]*)><([^<>]*)><([^<>]*)><([^<>]*)><", re.DOTALL)
ARGUMENT_END = ">"
# RFC 3461 §4: "+" and two upper-case hex digits stand for one byte.
XTEXT_ESCAPE = re.compile(r"\+([0-9A-F]{2})")


class SendmailSocketmap(HookProtocol):
    max_request = MAX_REQUEST
    frontend = FRONTEND

    def __init__(self, map_name: str) -> None:
        self.map_name = map_name

    def take_request(self, received: bytearray) -> HookRequest | bytes | None:
        lookup = take_netstring(received)
        if lookup is None:
            return None
        name, space, key = lookup.partition(" ")
        if not space or name != self.map_name:
            return netstring(f"PERM unknown map {name[:64]!r}")
        argument, identity, cut_short = parse_key(key)
        return HookRequest(argument, identity, cut_short)

    def answer(self, outcome: Outcome) -> bytes:
        reply = replies.reply_for(outcome)
        quoted = reply.replace('"', "'")  # no reply text has one; a quote would end the token
        return netstring(f'OK {answer_word(reply)} "{quoted}"')


def parse_key(key: str) -> tuple[str, Identity, bool]:
    """The argument, who asked, and whether Sendmail cut the key short (module doc)."""
    fields = IDENTITY_FIELDS.match(key)
    if fields is None:
        raise RequestError("not a '<address><port><fingerprint><auth><argument>' key")
    address, port, fingerprint, auth = fields.groups()
    rest = key[fields.end() :]
    cut_short = not rest.endswith(ARGUMENT_END)
    argument = rest if cut_short else rest[: -len(ARGUMENT_END)]
    if address.lower().startswith(IPV6_PREFIX):
        address = address[len(IPV6_PREFIX) :]
    identity = Identity(
        address=address,
        port=port_field(port),
        auth_user=xtext_decode(auth) or None,
        tls=bool(fingerprint),
        tls_fingerprint=fingerprint_from_hex(fingerprint),
    )
    return argument, identity, cut_short


def xtext_decode(text: str) -> str:
    """Sendmail's ``xtextify`` undone; a "+" without two hex digits is not its output."""
    if "+" in XTEXT_ESCAPE.sub("", text):
        raise RequestError("the AUTH field is not xtext")
    raw = XTEXT_ESCAPE.sub(lambda escape: _byte_as_text(int(escape.group(1), 16)), text)
    # one pass back to bytes and a UTF-8 decode give the name as SASL had it
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")


def _byte_as_text(byte: int) -> str:
    """ASCII as itself, a byte >= 0x80 as the surrogate that encodes back to it."""
    return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)


def answer_word(reply: str) -> str:
    if reply.startswith("2"):
        return "PASS"
    if reply.startswith("458"):
        return "FAIL"
    return "DENY"


def take_netstring(received: bytearray) -> str | None:
    """The data of the first complete netstring (taken off ``received``)."""
    colon = received.find(b":", 0, MAX_LENGTH_DIGITS + 1)
    if colon < 0:
        if len(received) > MAX_LENGTH_DIGITS:
            raise RequestError(f"request longer than {MAX_REQUEST} bytes")
        if not received.isdigit():
            raise RequestError("not a netstring length")
        return None
    digits = bytes(received[:colon])
    if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
        raise RequestError("not a netstring length")
    length = int(digits)
    if length > MAX_REQUEST:
        raise RequestError(f"request longer than {MAX_REQUEST} bytes")
    end = colon + 1 + length
    if len(received) <= end:
        return None
    if received[end] != ord(","):
        raise RequestError("netstring not terminated by ','")
    data = received[colon + 1 : end].decode("utf-8", "surrogateescape")
    del received[: end + 1]
    return data


def netstring(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return str(len(data)).encode() + b":" + data + b","
