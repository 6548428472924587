"""The AUTH password file: formats, refusals at load time, verification."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from etrn_bridge.frontends.passwords import (
    PasswordFile,
    PasswordFileError,
    hash_password,
    verify_password,
)


@pytest.fixture(scope="module")
def scrypt_hash() -> str:
    return hash_password("pw")


def test_scrypt_hash_is_self_describing_and_salted(scrypt_hash: str) -> None:
    assert scrypt_hash.startswith("$scrypt$ln=15,r=8,p=1$")
    assert hash_password("pw") != scrypt_hash
    assert verify_password(scrypt_hash, b"pw")
    assert not verify_password(scrypt_hash, b"pw ")


def test_argon2_hash() -> None:
    encoded = hash_password("pw", "argon2")
    assert encoded.startswith("$argon2id$")
    assert verify_password(encoded, b"pw") and not verify_password(encoded, b"PW")


def test_load_skips_comments_and_blank_lines(tmp_path: Path, scrypt_hash: str) -> None:
    path = tmp_path / "pw"
    path.write_text(f"# users\n\nalice:{scrypt_hash}\n  # indented comment\n")
    passwords = PasswordFile.load(path)
    assert passwords.verify(b"alice", b"pw") == "alice"
    assert passwords.verify(b"alice", b"nope") is None
    assert passwords.verify(b"nobody", b"pw") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice:secret", "plaintext"),
        ("alice", "expected 'user:hash'"),
        (":$scrypt$ln=15,r=8,p=1$AAAA$BBBB", "expected 'user:hash'"),
        ("alice:$scrypt$ln=15,r=8,p=1$AAAA$BBBB", "plaintext"),  # digest too short
        ("alice:$1$md5crypt$xyz", "plaintext"),
        ("alice:{PLAIN}secret", "plaintext"),
    ],
)
def test_unusable_lines_are_refused_with_their_line_number(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "pw"
    path.write_text(f"# first\n{line}\n")
    with pytest.raises(PasswordFileError, match=f"{path}:2: .*{message}"):
        PasswordFile.load(path)


def test_duplicate_user_is_refused(tmp_path: Path, scrypt_hash: str) -> None:
    path = tmp_path / "pw"
    path.write_text(f"alice:{scrypt_hash}\nalice:{scrypt_hash}\n")
    with pytest.raises(PasswordFileError, match="listed twice"):
        PasswordFile.load(path)


def run_passwd(user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 (the exit status is the subject)
        [sys.executable, "-m", "etrn_bridge", "passwd", user],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_passwd_command_prints_a_loadable_line(tmp_path: Path) -> None:
    result = run_passwd("dave", "hunter2")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "pw"
    path.write_text(result.stdout)
    assert PasswordFile.load(path).verify(b"dave", b"hunter2") == "dave"


def test_passwd_refuses_colon_in_user() -> None:
    result = run_passwd("a:b", "x")
    assert result.returncode == 1
