"""The Sendmail socketmap key (sendmail/sendmail.mc.plugin.snippet), parsed strictly."""

from __future__ import annotations

import pytest

from etrn_bridge.frontends.hookserver import RequestError
from etrn_bridge.frontends.sendmail_socketmap import parse_key, xtext_decode

SHA256 = ":".join(["0A"] * 32)


def test_every_field() -> None:
    argument, identity, cut_short = parse_key(
        f"<IPv6:::1><2525><{SHA256}><cust+2Betrn><@Acme.Example>"
    )
    assert (argument, cut_short) == ("@Acme.Example", False)
    assert (identity.address, identity.port, identity.auth_user) == ("::1", 2525, "cust+etrn")
    assert (identity.tls, identity.tls_fingerprint) == (True, "sha256:" + SHA256)
    assert identity.helo is None  # Sendmail has none at ETRN time


def test_empty_fields() -> None:
    argument, identity, cut_short = parse_key("<127.0.0.1><><><><#q>")
    assert (argument, cut_short) == ("#q", False)
    assert (identity.port, identity.auth_user, identity.tls, identity.tls_fingerprint) == (
        None,
        None,
        False,
        None,
    )


@pytest.mark.parametrize(
    ("field", "port"),
    [
        ("<123456>", None),  # no port has six digits
        ("<-1>", None),
        ("<\u00b2>", None),  # "²": str.isdigit() says yes, int() refuses
        ("<25>", 25),
    ],
)
def test_port_bounds(field: str, port: int | None) -> None:
    _, identity, _ = parse_key(f"<127.0.0.1>{field}<><><acme.example>")
    assert identity.port == port


def test_md5_fingerprint_is_tls_without_a_fingerprint() -> None:
    """{cert_md5}-sized (CertFingerprintAlgorithm unset or md5): never matches."""
    _, identity, _ = parse_key("<127.0.0.1><1><" + ":".join(["AB"] * 16) + "><><acme.example>")
    assert (identity.tls, identity.tls_fingerprint) == (True, None)


def test_argument_keeps_brackets_and_spaces() -> None:
    """Only the first four fields are bracket-free; the argument is the rest, whole."""
    argument, _, cut_short = parse_key("<127.0.0.1><1><><><<a> b>>")
    assert (argument, cut_short) == ("<a> b>", False)


def test_cut_short() -> None:
    argument, _, cut_short = parse_key("<127.0.0.1><1><><><acme.exam")
    assert (argument, cut_short) == ("acme.exam", True)


@pytest.mark.parametrize(
    ("xtext", "plain"),
    [
        ("alice", "alice"),
        ("a+2Bb", "a+b"),
        ("a+20b+3Dc+28d+5Ce", "a b=c(d\\e"),
        ("caf+C3+A9", "café"),  # UTF-8 bytes, one escape each
        ("x+FF", "x\udcff"),  # not UTF-8: kept as the byte (surrogateescape)
    ],
)
def test_xtext(xtext: str, plain: str) -> None:
    assert xtext_decode(xtext) == plain


@pytest.mark.parametrize("bad", ["a+", "a+2", "a+2b", "a+GG", "+"])
def test_not_xtext(bad: str) -> None:
    with pytest.raises(RequestError):
        xtext_decode(bad)
