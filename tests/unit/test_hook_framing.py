"""The hook protocols take whole requests off the bytes received, however they arrive.

An MTA writes each request in one go, but a socket may hand it over in any
pieces: every split must give the same requests, a piece must never be taken
for a request, and what follows a request must stay for the next one.
"""

from __future__ import annotations

import pytest

from etrn_bridge.frontends.exim_hook import EximHook
from etrn_bridge.frontends.hookserver import HookProtocol, HookRequest, RequestError
from etrn_bridge.frontends.postfix_policy import PostfixPolicy
from etrn_bridge.frontends.sendmail_socketmap import SendmailSocketmap

POSTFIX = (
    b"request=smtpd_access_policy\nprotocol_state=ETRN\nclient_address=127.0.0.1\n"
    b"client_port=2525\netrn_domain=customer.example\n\n"
)
POSTFIX_RCPT = b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n"
EXIM = b"ETRN 127.0.0.1 2525 - - - @customer.example\n"
SENDMAIL_KEY = b"etrn <127.0.0.1><2525><><><customer.example>"
SENDMAIL = str(len(SENDMAIL_KEY)).encode() + b":" + SENDMAIL_KEY + b","

PROTOCOLS: list[tuple[HookProtocol, bytes, str]] = [
    (PostfixPolicy(), POSTFIX, "customer.example"),
    (EximHook(), EXIM, "@customer.example"),
    (SendmailSocketmap("etrn"), SENDMAIL, "customer.example"),
]


def take_all(protocol: HookProtocol, pieces: list[bytes]) -> list[HookRequest | bytes]:
    """What a connection does: append each piece, take requests while there are."""
    received = bytearray()
    taken: list[HookRequest | bytes] = []
    for piece in pieces:
        received += piece
        while received and (request := protocol.take_request(received)) is not None:
            taken.append(request)
    assert received == b""  # nothing left over, nothing taken twice
    return taken


@pytest.mark.parametrize(("protocol", "message", "argument"), PROTOCOLS)
def test_every_split_of_two_requests_gives_the_two(
    protocol: HookProtocol, message: bytes, argument: str
) -> None:
    stream = message * 2
    for cut in range(1, len(stream)):
        taken = take_all(protocol, [stream[:cut], stream[cut:]])
        assert [t.argument for t in taken if isinstance(t, HookRequest)] == [argument] * 2
    one_byte_at_a_time = take_all(protocol, [bytes([b]) for b in stream])
    assert len(one_byte_at_a_time) == 2


@pytest.mark.parametrize(("protocol", "message", "argument"), PROTOCOLS)
def test_a_piece_is_not_a_request(protocol: HookProtocol, message: bytes, argument: str) -> None:
    for cut in range(1, len(message)):
        received = bytearray(message[:cut])
        assert protocol.take_request(received) is None
        assert received == message[:cut]  # left for when the rest comes


def test_postfix_other_states_are_answered_without_the_service() -> None:
    received = bytearray(POSTFIX_RCPT + POSTFIX)
    assert PostfixPolicy().take_request(received) == b"action=DUNNO\n\n"
    assert received == POSTFIX


def test_sendmail_other_maps_are_answered_without_the_service() -> None:
    key = b"aliases postmaster"
    received = bytearray(str(len(key)).encode() + b":" + key + b",")
    assert SendmailSocketmap("etrn").take_request(received) == b"26:PERM unknown map 'aliases',"


@pytest.mark.parametrize(
    ("protocol", "garbage"),
    [
        (PostfixPolicy(), b"x" * 16385),  # longer than any request, no end in sight
        (PostfixPolicy(), b"not an attribute\n\n"),
        (EximHook(), b"y" * 17409),
        (EximHook(), b"GET / HTTP/1.0\n"),
        (SendmailSocketmap("etrn"), b"12345"),  # a length of five digits: over 8192
        (SendmailSocketmap("etrn"), b"GET"),
        (SendmailSocketmap("etrn"), b"9999:"),
        (SendmailSocketmap("etrn"), b"3:abc;"),
    ],
)
def test_what_no_request_can_be_is_refused_at_once(protocol: HookProtocol, garbage: bytes) -> None:
    with pytest.raises(RequestError):
        protocol.take_request(bytearray(garbage))
