"""Real Postfix, Exim and Sendmail (tests/mta/lab), started once per session.

Skipped, with the reason, when not root or when the lab is not installed
(``bash tests/mta/lab/all.sh install``). The session rebuilds the lab configs
from the deployment kits (``all.sh configure``) before starting, so the tests
always run against what postfix/, exim/ and sendmail/ say today.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mtalab import BRIDGE_USER, LAB_DIR, MTA_LAB, MTAS, POSTDROP, LabMta, script_env

SUDOERS_DROP_IN = Path("/etc/sudoers.d/etrn-bridge-mta-lab")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "real-MTA tests need root (the lab runs Postfix/Exim/Sendmail as root)"
    missing = [m for m in MTAS if not (MTA_LAB / m / "bin").is_dir()]
    if missing:
        return (
            f"MTA lab not installed in {MTA_LAB} ({', '.join(missing)} missing): "
            "run 'bash tests/mta/lab/all.sh install' as root"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.mta)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def lab() -> Iterator[dict[str, LabMta]]:
    """All three MTAs running, configured from the kits; stopped at the end."""
    all_sh = ["bash", str(LAB_DIR / "all.sh")]
    env = script_env()
    subprocess.run([*all_sh, "stop"], capture_output=True, check=False, env=env)
    subprocess.run([*all_sh, "configure"], capture_output=True, check=True, env=env)
    subprocess.run([*all_sh, "start"], capture_output=True, check=True, env=env)
    mtas = {name: LabMta.from_env(name) for name in MTAS}
    yield mtas
    for mta in mtas.values():
        mta.script("clear-queue")
    subprocess.run([*all_sh, "stop"], capture_output=True, check=False, env=env)


@pytest.fixture(params=MTAS)
def mta(request: pytest.FixtureRequest, lab: dict[str, LabMta]) -> LabMta:
    """Each MTA in turn, with an empty queue and the sink up."""
    chosen = lab[request.param]
    chosen.reset()
    return chosen


@pytest.fixture
def sudoers(lab: dict[str, LabMta], tmp_path: Path) -> Iterator[str]:
    """The unprivileged bridge user, and the kits' sudoers lines (for the lab's
    programs) installed while the test runs; yields the user name."""
    if shutil.which("sudo") is None:
        pytest.skip("sudo not installed: run scripts/install-system-deps.sh")
    if subprocess.run(["id", BRIDGE_USER], capture_output=True, check=False).returncode:
        # system user, own group, no home, no login shell
        useradd = ["useradd", "-r", "-U", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin"]
        subprocess.run([*useradd, BRIDGE_USER], check=True)
    draft = tmp_path / "sudoers"
    draft.write_text("".join(lab[m].kit_sudoers_lines() + "\n" for m in MTAS))
    subprocess.run(["visudo", "-cf", str(draft)], capture_output=True, check=True)
    draft.chmod(0o440)
    shutil.copy2(draft, SUDOERS_DROP_IN)
    try:
        yield BRIDGE_USER
    finally:
        SUDOERS_DROP_IN.unlink()


@pytest.fixture
def postdrop_member(sudoers: str) -> Iterator[str]:
    """The bridge user, in group postdrop while the test runs (SupplementaryGroups=)."""
    subprocess.run(["gpasswd", "-a", sudoers, POSTDROP], capture_output=True, check=True)
    try:
        yield sudoers
    finally:
        subprocess.run(["gpasswd", "-d", sudoers, POSTDROP], capture_output=True, check=True)
