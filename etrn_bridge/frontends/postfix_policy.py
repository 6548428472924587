"""Postfix policy delegation for ETRN (``smtpd_etrn_restrictions = check_policy_service ...``).

Protocol (Postfix SMTPD_POLICY_README): ``name=value`` lines, an empty line
ends a request; the answer is ``action=...`` and an empty line. Postfix keeps
a connection for many requests, and runs several at once.

Postfix has already checked the syntax and strips one leading ``@``/``#``
before asking (smtpd.c etrn_cmd), so subtree and queue requests cannot be
told apart here. It answers the client itself: ``action=OK`` lets it go on to
its own flush and ``250 Queuing started``; a numeric action is its reply, with
``<domain>: Etrn command rejected:`` put in front of the text.
"""

from __future__ import annotations

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

FRONTEND = "postfix-policy"
REQUEST_TYPE = "smtpd_access_policy"
ETRN_STATE = "ETRN"
# A real request is about 1 KiB (certificate subjects included); anything much
# longer is not Postfix.
MAX_REQUEST = 16384
# Passes the ETRN restrictions: Postfix then flushes and answers 250. Not DUNNO:
# the kit's restriction list ends in "reject", which DUNNO would fall through to.
ALLOW = "OK"
# Queries at other states (the endpoint listed in another restriction list).
NEUTRAL = "DUNNO"
END_OF_REQUEST = b"\n\n"  # the last attribute's newline and the empty line


class PostfixPolicy(HookProtocol):
    max_request = MAX_REQUEST
    frontend = FRONTEND

    def take_request(self, received: bytearray) -> HookRequest | bytes | None:
        attributes = take_attributes(received)
        if attributes is None:
            return None
        if attributes.get("request") != REQUEST_TYPE:
            raise RequestError(f"not a policy request: request={attributes.get('request')!r}")
        if attributes.get("protocol_state") != ETRN_STATE:
            return action(NEUTRAL)
        return HookRequest(attributes.get("etrn_domain", ""), identity_of(attributes))

    def answer(self, outcome: Outcome) -> bytes:
        reply = replies.reply_for(outcome)
        return action(ALLOW if reply.startswith("2") else reply)


def action(text: str) -> bytes:
    return f"action={text}\n\n".encode()


def take_attributes(received: bytearray) -> dict[str, str] | None:
    """The attributes of the first complete request (taken off ``received``)."""
    block = take_through(received, END_OF_REQUEST, MAX_REQUEST)
    if block is None:
        return None
    text = block.decode("utf-8", "surrogateescape")
    try:
        # dict() of the split lines runs in C; a line without "=" is a ValueError.
        attributes = dict(line.split("=", 1) for line in text.split("\n"))
    except ValueError:
        raise RequestError("not a name=value line" if text else "empty request") from None
    if "" in attributes:
        raise RequestError("not a name=value line")
    return attributes


def identity_of(attributes: dict[str, str]) -> Identity:
    port = attributes.get("client_port", "")
    return Identity(
        address=attributes.get("client_address", ""),
        port=port_field(port),
        helo=attributes.get("helo_name") or None,
        auth_user=attributes.get("sasl_username") or None,
        tls=bool(attributes.get("encryption_protocol")),
        tls_fingerprint=fingerprint_from_hex(attributes.get("ccert_fingerprint")),
    )
