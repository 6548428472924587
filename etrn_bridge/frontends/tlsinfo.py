"""TLS for the listener: the server context (RFC 3207 STARTTLS) and client certificates."""

from __future__ import annotations

import hashlib
import ssl

from etrn_bridge.config import TlsSettings

FINGERPRINT_PREFIX = "sha256:"
SHA256_HEX_DIGITS = 64


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The STARTTLS context; with ``client_ca`` it asks for (not requires) a client cert.

    CERT_OPTIONAL, not REQUIRED: clients without a certificate may still use
    TLS and AUTH, while a certificate that is sent must verify against the CA.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.cert, settings.key)
    if settings.client_ca is not None:
        context.load_verify_locations(cafile=settings.client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def peer_fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """``sha256:AB:CD:...`` of the verified client certificate, None without one."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return fingerprint(der)


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate in the form policies use."""
    return FINGERPRINT_PREFIX + hashlib.sha256(der).digest().hex(":").upper()


def fingerprint_from_hex(text: str | None) -> str | None:
    """An MTA's SHA-256 certificate fingerprint ("AB:CD:..." or "abcd...") in the
    policy's form; None for anything else (an MD5 digest, garbage, nothing)."""
    digits = (text or "").replace(":", "").strip().upper()
    if len(digits) != SHA256_HEX_DIGITS or not all(c in "0123456789ABCDEF" for c in digits):
        return None
    return FINGERPRINT_PREFIX + bytes.fromhex(digits).hex(":").upper()
