"""Exim's ``${readsocket}`` from ``acl_smtp_etrn`` (exim/README.md, plugin mode).

Request, one line written by the kit's ACL, fields separated by one space:

    ETRN <client address> <client port> <HELO|-> <AUTH id|-> <cert SHA-256|-> <argument>

HELO and AUTH id are base64 (``${str2b64:...}``: they may hold spaces), the
argument is ``$smtp_command_argument`` as the client sent it (``@``/``#``
kept), last, so it may hold anything but a newline. Answer, one line without
CR (Exim would pass it on): ``OK <25x reply>``, ``DENY <4xx reply>`` or
``TEMP <458 reply>``; then the bridge closes, because readsocket reads to EOF.
Exim keeps the reply code only when its first digit is the one the ACL verb
expects (2 accept, 4 deny/defer), so a syntax error (500/501 elsewhere) is
answered with replies.SYNTAX_ERROR_TEMPORARY here.
"""

from __future__ import annotations

import base64
import binascii

from etrn_bridge import replies
from etrn_bridge.frontends.hookserver import (
    HookProtocol,
    HookRequest,
    RequestError,
    port_field,
    take_through,
)
from etrn_bridge.frontends.tlsinfo import fingerprint_from_hex
from etrn_bridge.request import Identity, Outcome

FRONTEND = "exim-acl"
VERB = "ETRN"
EMPTY = "-"
FIELDS = 7  # the verb, five client fields, the argument
# Exim's SMTP command buffer (smtp_cmd_buffer_size) is 16 KiB; the fields around it are short.
MAX_REQUEST = 16384 + 1024


class EximHook(HookProtocol):
    max_request = MAX_REQUEST
    frontend = FRONTEND
    closes_after_answer = True  # readsocket reads to EOF

    def take_request(self, received: bytearray) -> HookRequest | None:
        line = take_through(received, b"\n", MAX_REQUEST)
        if line is None:
            return None
        argument, identity = parse_request(line)
        return HookRequest(argument, identity)

    def answer(self, outcome: Outcome) -> bytes:
        reply = replies.reply_for(outcome)
        if reply.startswith("5"):
            reply = replies.SYNTAX_ERROR_TEMPORARY
        return f"{answer_word(reply)} {reply}\n".encode()


def answer_word(reply: str) -> str:
    if reply.startswith("2"):
        return "OK"
    if reply.startswith("458"):
        return "TEMP"
    return "DENY"


def parse_request(line: bytes) -> tuple[str, Identity]:
    text = line.decode("utf-8", "surrogateescape")
    fields = text.split(" ", FIELDS - 1)
    if len(fields) != FIELDS or fields[0] != VERB:
        raise RequestError("not an 'ETRN address port helo auth fingerprint argument' line")
    _, address, port, helo, auth, fingerprint, argument = fields
    identity = Identity(
        address=address,
        port=port_field(port),
        helo=_base64_field(helo),
        auth_user=_base64_field(auth),
        tls=fingerprint != EMPTY,
        tls_fingerprint=fingerprint_from_hex(fingerprint),
    )
    return argument, identity


def _base64_field(field: str) -> str | None:
    if field == EMPTY:
        return None
    try:
        return base64.b64decode(field, validate=True).decode("utf-8", "surrogateescape") or None
    except (binascii.Error, ValueError):
        raise RequestError("a HELO or AUTH field is not base64") from None
