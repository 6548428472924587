"""Least privilege per MTA, with the real MTAs: the bridge runs as the kits'
unprivileged user, the flush works, and that user cannot do more (delete mail).

- Postfix, no sudo: ``authorized_flush_users = etrn-bridge`` and the group
  ``postdrop``, either through the setgid bit of a packaged postqueue (a
  setgid copy is made for that test) or as the unit's SupplementaryGroups=
  (the lab's own postqueue is not setgid). ``postsuper -d`` and the queue
  files stay out of reach; NoNewPrivileges without the group breaks the flush.
- Exim, no sudo: ``exim/unprivileged.conf.snippet`` (no admin needed to list
  and force delivery). Exim drops its setuid privileges for any ``-C`` file a
  non-root, non-exim caller names (TRUSTED_CONFIG_LIST only trusts root and
  the exim user), so this test installs the lab's config where Debian's exim4
  looks by default, /etc/exim4/exim4.conf, as a real deployment has it.
- Sendmail cannot (measured in test_bridge_real.py: restrictqrun, and a
  queue run in the caller's process needs write access to the 0700 root queue
  directory, which is also all it takes to delete mail): through sudo, whose
  kit lines allow the flush and nothing else.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridgekit import require_program
from mtalab import KIT_ROOT, MTA_LAB, NODE, POSTDROP, RECIPIENTS, LabMta, lab_env
from test_bridge_real import running_bridge
from test_cli_real import cli, write_config

EXIM_DEFAULT_CONFIG = Path("/etc/exim4/exim4.conf")  # Debian's compiled-in first choice


def as_user(user: str, *argv: str, groups: str | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` with its own group and only ``groups`` besides."""
    identity = ["--reuid", user, "--regid", grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name]
    extra = ["--groups", groups] if groups else ["--clear-groups"]
    return subprocess.run(
        ["setpriv", *identity, *extra, *argv], capture_output=True, text=True, check=False
    )


# Postfix ---------------------------------------------------------------------------


def test_postfix_flush_without_sudo_and_nothing_more(
    lab: dict[str, LabMta], postdrop_member: str, tmp_path: Path
) -> None:
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    with running_bridge(tmp_path, mta.backend_options, user=postdrop_member) as bridge:
        code, text = bridge.etrn("customer.test")
        assert code == 253 and "2 pending messages" in text, text
        assert set(mta.wait_received(NODE)) == NODE
        code, text = bridge.etrn("@customer.test")  # postqueue -i per message
        assert code == 253 and "1 pending messages" in text, text
    postfix = lab_env("postfix")
    left = mta.queued_recipients()
    assert left == set(RECIPIENTS) - NODE - {"user@sub.customer.test"}
    user = postdrop_member
    # Cannot delete mail: postsuper is root's, and the queue directories are postfix's.
    denied = as_user(user, f"{postfix['POSTFIX_BIN']}/postsuper", "-d", "ALL", groups=POSTDROP)
    assert denied.returncode != 0 and "reserved for the superuser" in denied.stderr
    spool = MTA_LAB / "postfix" / "spool" / "deferred"
    removing = as_user(user, "find", str(spool), "-type", "f", "-delete", groups=POSTDROP)
    assert removing.returncode != 0 and "Permission denied" in removing.stderr
    assert mta.queued_recipients() == left
    # Without the group (NoNewPrivileges=yes without SupplementaryGroups=postdrop):
    # postqueue cannot reach the flush service.
    alone = as_user(user, mta.program, "-s", "customer.test")
    assert alone.returncode == 69 and "public/flush: Permission denied" in alone.stderr
    # authorized_flush_users names the bridge alone: another postdrop member may not.
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", f"--groups={POSTDROP}"]
    other = subprocess.run(
        [*nobody, mta.program, "-s", "customer.test"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode == 69 and "is not allowed to flush" in other.stderr


POSTFIX_DEFAULT_MAIN_CF = Path("/etc/postfix/main.cf")  # read by a setgid postqueue


@pytest.fixture
def setgid_postqueue(lab: dict[str, LabMta]) -> Iterator[list[str]]:
    """postqueue as a package installs it: setgid postdrop. The lab's copy is not
    (a setgid program ignores LD_LIBRARY_PATH), so this one gets its library
    path built in (patchelf). It also ignores MAIL_CONFIG: ``-c DIR`` is honoured
    only for a directory the default main.cf lists in alternate_config_directories.
    Yields the argv prefix: [postqueue, -c, DIR]."""
    patchelf = require_program("patchelf")
    if POSTFIX_DEFAULT_MAIN_CF.exists():
        pytest.fail(f"{POSTFIX_DEFAULT_MAIN_CF} exists: this test will not overwrite it")
    postfix = MTA_LAB / "postfix"
    copy = postfix / "setgid" / "postqueue"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(postfix / "root/usr/sbin/postqueue", copy)
    runpath = str(postfix / "root/usr/lib/postfix")
    subprocess.run([patchelf, "--set-rpath", runpath, str(copy)], check=True)
    os.chown(copy, 0, grp.getgrnam(POSTDROP).gr_gid)
    copy.chmod(0o2755)
    config_dir = lab_env("postfix")["POSTFIX_CONFIG_DIR"]
    made_dir = not POSTFIX_DEFAULT_MAIN_CF.parent.exists()
    POSTFIX_DEFAULT_MAIN_CF.parent.mkdir(exist_ok=True)
    POSTFIX_DEFAULT_MAIN_CF.write_text(f"alternate_config_directories = {config_dir}\n")
    try:
        yield [str(copy), "-c", config_dir]
    finally:
        POSTFIX_DEFAULT_MAIN_CF.unlink()
        if made_dir:
            POSTFIX_DEFAULT_MAIN_CF.parent.rmdir()


def test_postfix_setgid_postqueue_and_no_new_privileges(
    lab: dict[str, LabMta], sudoers: str, setgid_postqueue: list[str], tmp_path: Path
) -> None:
    """Without systemd the setgid bit is all the bridge needs (no group of its
    own). Under NoNewPrivileges=yes the kernel ignores the bit and postqueue
    fails, unless the process has the group itself (SupplementaryGroups=postdrop)."""
    mta = lab["postfix"]
    mta.reset()
    mta.inject()
    postqueue, *config = setgid_postqueue
    backend = {"type": "postfix", "postqueue": postqueue, "args": config}
    with running_bridge(tmp_path, backend, user=sudoers) as bridge:
        code, text = bridge.etrn("customer.test")
        assert code == 253 and "2 pending messages" in text, text
        assert set(mta.wait_received(NODE)) == NODE
    hardened = ["setpriv", "--reuid", sudoers, "--regid", sudoers, "--no-new-privs"]
    refused = subprocess.run(
        [*hardened, "--clear-groups", *setgid_postqueue, "-s", "sub.customer.test"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 69 and "public/flush: Permission denied" in refused.stderr
    assert "user@sub.customer.test" in mta.queued_recipients()
    granted = subprocess.run(
        [*hardened, f"--groups={POSTDROP}", *setgid_postqueue, "-s", "sub.customer.test"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert granted.returncode == 0, granted.stderr
    assert "user@sub.customer.test" in mta.wait_received(NODE | {"user@sub.customer.test"})


def test_postfix_doctor_knows_who_may_flush(lab: dict[str, LabMta], tmp_path: Path) -> None:
    """The kit's plain user name is what doctor accepts; any other user gets a FIX."""
    backend = lab["postfix"].backend_options
    allowed = cli("doctor", "-c", str(write_config(tmp_path, backend, user="etrn-bridge")))
    assert "ok     etrn-bridge may flush: authorized_flush_users = etrn-bridge" in allowed.stdout
    refused = cli("doctor", "-c", str(write_config(tmp_path, backend, user="nobody")))
    assert refused.returncode == 1
    assert "add 'nobody' to authorized_flush_users" in refused.stdout


# Exim ------------------------------------------------------------------------------


@pytest.fixture
def exim_default_config(lab: dict[str, LabMta]) -> Iterator[Path]:
    """The lab's Exim config plus the kit's unprivileged snippet, where exim4
    reads it without -C; yields the exim4 binary (setuid root, as packaged)."""
    if EXIM_DEFAULT_CONFIG.exists():
        pytest.fail(f"{EXIM_DEFAULT_CONFIG} exists: this test will not overwrite it")
    env = lab_env("exim")
    lab_config = Path(env["EXIM_CONFIG"]).read_text()
    snippet = (KIT_ROOT / "exim" / "unprivileged.conf.snippet").read_text()
    main, begin, rest = lab_config.partition("\nbegin ")  # main options come first
    made_dir = not EXIM_DEFAULT_CONFIG.parent.exists()
    EXIM_DEFAULT_CONFIG.parent.mkdir(exist_ok=True)
    EXIM_DEFAULT_CONFIG.write_text(f"{main}\n{snippet}{begin}{rest}")
    EXIM_DEFAULT_CONFIG.chmod(0o644)  # root's, not writable by others: Exim checks
    try:
        yield MTA_LAB / "exim" / "root" / "usr" / "sbin" / "exim4"
    finally:
        EXIM_DEFAULT_CONFIG.unlink()
        if made_dir:
            EXIM_DEFAULT_CONFIG.parent.rmdir()


def test_exim_flush_without_sudo_and_nothing_more(
    lab: dict[str, LabMta], sudoers: str, exim_default_config: Path, tmp_path: Path
) -> None:
    mta = lab["exim"]
    mta.reset()
    mta.inject()
    exim = str(exim_default_config)
    backend = {"type": "exim", "exim": exim}
    with running_bridge(tmp_path, backend, user=sudoers) as bridge:
        code, text = bridge.etrn("customer.test")
        assert code == 253 and "2 pending messages" in text, text
        assert set(mta.wait_received(NODE)) == NODE
        assert bridge.records(count=2)[0]["reply"] == 253
    left = mta.listing()
    assert {r for _, rcpts, _ in left for r in rcpts} == set(RECIPIENTS) - NODE
    queue_id = left[0][0]
    for admin_only in (["-Mrm", queue_id], ["-Mf", queue_id], ["-Mg", queue_id]):
        refused = as_user(sudoers, exim, *admin_only)
        said = (refused.stdout + refused.stderr).lower()  # -Mrm/-Mf: stdout, -Mg: stderr
        assert refused.returncode != 0 and "permission denied" in said, admin_only
    spool = MTA_LAB / "exim" / "spool" / "input"
    removing = as_user(sudoers, "find", str(spool), "-type", "f", "-delete")
    assert removing.returncode != 0 and "Permission denied" in removing.stderr
    assert mta.listing() == left
    # Under no-new-privileges (the unit without setuid-mta.conf) exim4's setuid
    # bit is ignored: -M cannot read the spool, and nothing is delivered.
    hardened = ["setpriv", "--reuid", sudoers, "--regid", sudoers, "--clear-groups"]
    forced = subprocess.run(
        [*hardened, "--no-new-privs", exim, "-M", queue_id],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Permission denied" in forced.stdout + forced.stderr
    assert mta.listing() == left


# Sendmail (and Exim) through sudo: the kit's lines allow the flush, nothing else ---


@pytest.mark.parametrize("name", ["exim", "sendmail"])
def test_sudo_lines_allow_nothing_but_the_flush(
    lab: dict[str, LabMta], sudoers: str, name: str
) -> None:
    mta = lab[name]
    mta.reset()
    mta.inject()
    queued = mta.listing()
    queue_id = queued[0][0]
    beyond = {
        "exim": [["-Mrm", queue_id], ["-R", "customer.test"], ["-M", queue_id, "-C", "/tmp/x"]],
        "sendmail": [
            ["-qRcustomer.test"],
            ["-q"],
            [f"-qI{queue_id}", "-C", "/tmp/x.cf"],
            # -qI selects the ids that contain its argument: never a piece of one
            [f"-qI{queue_id[:8]}"],
            [f"-qI{queue_id[-6:]}"],
            ["-qQ", f"-qI{queue_id[:8]}", "-Q"],
            ["-qQ", f"-qI{queue_id}", "-Qreason"],  # quarantines instead of releasing
        ],
    }[name]
    for argv in beyond:
        refused = as_user(sudoers, "sudo", "-n", mta.program, *argv)
        assert refused.returncode == 1 and "password is required" in refused.stderr, argv
    if name == "sendmail":  # the release of held mail, with whole ids (nothing held here)
        release = as_user(sudoers, "sudo", "-n", mta.program, "-qQ", f"-qI{queue_id}", "-Q")
        assert release.returncode == 0, release.stderr
    queue_dir = Path(lab_env(name)["SENDMAIL_QUEUE_DIR"]) if name == "sendmail" else None
    if queue_dir is not None:
        removing = as_user(sudoers, "find", str(queue_dir), "-type", "f", "-delete")
        assert removing.returncode != 0 and "Permission denied" in removing.stderr
    assert mta.listing() == queued
    assert mta.wait_received(set()) == {}
