"""Packaging: ``python -m build`` makes an sdist and, from it, a wheel; the wheel
installed into a fresh virtualenv brings the console script, the man page, the
systemd units, the logrotate snippet, the example configs and the MTA kits.

Building needs the build backend and installing needs the dependencies from
the package index (as ``make venv`` does).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
from bridgekit import REPO_ROOT

import etrn_bridge

# Every data file the wheel installs, as share/... -> where it comes from in the repository.
SHIPPED = {
    "share/man/man8/etrn-bridge.8": "docs/etrn-bridge.8",
    "share/etrn-bridge/systemd/etrn-bridge.service": "systemd/etrn-bridge.service",
    "share/etrn-bridge/systemd/etrn-bridge.socket": "systemd/etrn-bridge.socket",
    "share/etrn-bridge/systemd/setuid-mta.conf": "systemd/setuid-mta.conf",
    "share/etrn-bridge/logrotate/etrn-bridge": "logrotate/etrn-bridge",
    "share/etrn-bridge/examples/etrn-bridge.yaml": "examples/etrn-bridge.yaml",
    "share/etrn-bridge/examples/server.yaml": "examples/server.yaml",
    "share/etrn-bridge/examples/isp.yaml": "examples/isp.yaml",
    "share/etrn-bridge/examples/isp/dialup.domains": "examples/isp/dialup.domains",
    "share/etrn-bridge/examples/etrn-bridge.schema.json": "examples/etrn-bridge.schema.json",
    "share/etrn-bridge/postfix/README.md": "postfix/README.md",
    "share/etrn-bridge/postfix/main.cf.snippet": "postfix/main.cf.snippet",
    "share/etrn-bridge/exim/main.conf.snippet": "exim/main.conf.snippet",
    "share/etrn-bridge/exim/unprivileged.conf.snippet": "exim/unprivileged.conf.snippet",
    "share/etrn-bridge/sendmail/sendmail.mc.snippet": "sendmail/sendmail.mc.snippet",
}


def run(*argv: str | Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built the way a release is."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, REPO_ROOT)
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (no pip state from the test's own) with only the wheel."""
    prefix = tmp_path_factory.mktemp("venv")
    venv.create(prefix, with_pip=True)
    (wheel,) = dist.glob("*.whl")
    run(prefix / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)
    return prefix


def test_build_makes_a_wheel_and_an_sdist_of_the_one_version(dist: Path) -> None:
    version = etrn_bridge.__version__
    assert sorted(p.name for p in dist.iterdir()) == [
        f"etrn_bridge-{version}-py3-none-any.whl",
        f"etrn_bridge-{version}.tar.gz",
    ]
    with tarfile.open(dist / f"etrn_bridge-{version}.tar.gz") as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"systemd/etrn-bridge.service", "logrotate/etrn-bridge", "tests/bridgekit.py"} <= names


def test_console_script_reports_the_package_version(installed: Path) -> None:
    out = run(installed / "bin" / "etrn-bridge", "--version")
    assert out.strip() == f"etrn-bridge {etrn_bridge.__version__}"
    metadata = "import importlib.metadata as m; print(m.version('etrn-bridge'))"
    assert run(installed / "bin" / "python", "-c", metadata).strip() == etrn_bridge.__version__


def test_data_files_are_installed_as_in_the_repository(installed: Path) -> None:
    for target, source in SHIPPED.items():
        path = installed / target
        assert path.is_file(), f"{target} not installed"
        assert path.read_bytes() == (REPO_ROOT / source).read_bytes(), target


def test_installed_example_config_is_valid(installed: Path) -> None:
    example = installed / "share/etrn-bridge/examples/server.yaml"
    assert "OK" in run(installed / "bin" / "etrn-bridge", "check", "-c", example)
