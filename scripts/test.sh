#!/usr/bin/env bash
# Every check and test of etrn-bridge: lint, types, unit, integration over
# loopback sockets, and the real Postfix/Exim/Sendmail tests.
#
# The MTA tests need the lab of tests/mta/lab (real MTAs unpacked from Debian
# packages into /opt/mta-lab). As root this script installs it (idempotent);
# otherwise it says loudly that those tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin

echo "== ruff"
"$BIN/ruff" check .
"$BIN/ruff" format --check .
echo "== mypy"
"$BIN/mypy"

if [ "$(id -u)" = 0 ]; then
    echo "== system packages and the MTA lab (root: installing)"
    bash scripts/install-system-deps.sh
    VENV=${VENV:-.venv} bash scripts/milter-extra.sh
    bash tests/mta/lab/all.sh install
    export ETRN_BRIDGE_MTA_LAB=/opt/mta-lab
else
    echo "!! Not root: the real-MTA tests (tests/mta) will be SKIPPED."
    echo "!! Run 'make test' as root (as CI does) to install Postfix, Exim and Sendmail and run them."
    # The real-client tests fail (they never skip) without these; say so up front.
    for program in perl fetchmail; do
        command -v "$program" >/dev/null ||
            echo "!! $program is missing: its client tests will FAIL (apt-get install $program)."
    done
fi

echo "== pytest"
"$BIN/pytest" -ra "$@"
