"""The SMTP AUTH password file: ``user:hash`` lines, scrypt or argon2id hashes.

Hashes are self-describing so the file can mix schemes:

- ``$scrypt$ln=15,r=8,p=1$<base64 salt>$<base64 hash>`` (stdlib ``hashlib.scrypt``)
- ``$argon2id$v=19$m=...`` (argon2-cffi, the optional ``[argon2]`` extra)

Plaintext or unknown formats are refused when the file is loaded, never at
login time. Verification is slow on purpose, so callers run it in an executor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRYPT_PREFIX = "$scrypt$"
ARGON2_PREFIX = "$argon2id$"
# RFC 7914 §2 parameters; N = 2**15, r = 8 (OWASP's scrypt minimum is N=2**17 at
# r=8, p=1 for web logins; SMTP AUTH is rarer and behind TLS, 2**15 keeps a
# verification under 100 ms on one core).
SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_BYTES = 16
SCRYPT_HASH_BYTES = 32
_SCRYPT_FORMAT = re.compile(
    r"\$scrypt\$ln=(?P<ln>[0-9]{1,2}),r=(?P<r>[0-9]{1,3}),p=(?P<p>[0-9]{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+=*)\$(?P<hash>[A-Za-z0-9+/]+=*)\Z"
)


class PasswordFileError(ValueError):
    """The file cannot be used; the message names the file and line."""


def hash_password(password: str, scheme: str = "scrypt") -> str:
    """A new self-describing hash of ``password``."""
    if scheme == "argon2":
        return str(_argon2_hasher().hash(password))
    if scheme != "scrypt":
        raise ValueError(f"unknown password scheme {scheme!r}")
    salt = os.urandom(SCRYPT_SALT_BYTES)
    digest = _scrypt(password.encode("utf-8"), salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    return (
        f"{SCRYPT_PREFIX}ln={SCRYPT_LOG2_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"
    )


def verify_password(encoded: str, password: bytes) -> bool:
    """Whether ``password`` matches ``encoded`` (compared in constant time)."""
    if encoded.startswith(ARGON2_PREFIX):
        from argon2.exceptions import VerificationError  # noqa: PLC0415 (optional extra)

        try:
            return bool(_argon2_hasher().verify(encoded, password))
        except VerificationError:
            return False
    try:
        params = ScryptParameters.parse(encoded)
    except ValueError:
        return False
    digest = _scrypt(password, params.salt, params.log2_n, params.r, params.p)
    return hmac.compare_digest(digest, params.digest)


@dataclass(frozen=True, slots=True)
class ScryptParameters:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, encoded: str) -> ScryptParameters:
        match = _SCRYPT_FORMAT.match(encoded)
        if match is None:
            raise ValueError("not a $scrypt$ hash")
        salt = base64.b64decode(match["salt"], validate=True)
        digest = base64.b64decode(match["hash"], validate=True)
        if len(digest) != SCRYPT_HASH_BYTES or not 1 <= int(match["ln"]) <= 24:
            raise ValueError("unsupported $scrypt$ parameters")
        return cls(int(match["ln"]), int(match["r"]), int(match["p"]), salt, digest)


@dataclass(frozen=True, slots=True)
class PasswordFile:
    """The users and their hashes, checked when loaded."""

    hashes: Mapping[str, str]
    # Verified against when the user is unknown, so a wrong user name costs as
    # much time as a wrong password and names cannot be probed by timing.
    decoy: str

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PasswordFileError(f"{path}: cannot read: {exc}") from None
        hashes: dict[str, str] = {}
        for number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            user, separator, encoded = line.partition(":")
            where = f"{path}:{number}"
            if not separator or not user:
                raise PasswordFileError(f"{where}: expected 'user:hash'")
            if user in hashes:
                raise PasswordFileError(f"{where}: user {user!r} listed twice")
            _check_hash_format(encoded, where)
            hashes[user] = encoded
        decoy = next(iter(hashes.values()), "") or hash_password(os.urandom(16).hex())
        return cls(hashes, decoy)

    def verify(self, user: bytes, password: bytes) -> str | None:
        """The user name when the credentials are right, else None. Blocks for ~0.1 s."""
        name = user.decode("utf-8", "surrogateescape")
        encoded = self.hashes.get(name)
        matches = verify_password(encoded or self.decoy, password)
        return name if matches and encoded is not None else None


def _check_hash_format(encoded: str, where: str) -> None:
    if encoded.startswith(ARGON2_PREFIX):
        try:
            _argon2_hasher()
        except ImportError:
            raise PasswordFileError(
                f"{where}: argon2 hashes need the argon2 extra (pip install etrn-bridge[argon2])"
            ) from None
        return
    try:
        ScryptParameters.parse(encoded)
    except ValueError:
        raise PasswordFileError(
            f"{where}: not a '$scrypt$' or '$argon2id$' hash (plaintext passwords are "
            "refused; make a hash with 'etrn-bridge passwd')"
        ) from None


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    # RFC 7914 §6: scrypt needs 128 * r * N bytes (plus p blocks); leave room.
    memory = 128 * r * (n + p + 2)
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=memory * 2, dklen=SCRYPT_HASH_BYTES
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _argon2_hasher() -> Any:
    from argon2 import PasswordHasher  # noqa: PLC0415 (optional extra)

    return PasswordHasher()
