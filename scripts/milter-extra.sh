#!/usr/bin/env bash
# The [milter] extra (pymilter) is a C extension built against libmilter.
# As root: install libmilter-dev and a compiler first, then the extra (CI does
# this, and a milter test that cannot run FAILS there). Otherwise: install the
# extra when libmilter-dev is present, else say loudly what will be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
"$BIN/python" -c 'import Milter' 2>/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then
    bash scripts/install-system-deps.sh
fi
if [ -e /usr/include/libmilter/mfapi.h ]; then
    "$BIN/pip" install -q -e '.[milter]'
else
    echo "!! libmilter-dev is missing: pymilter (the [milter] extra) is not installed and"
    echo "!! the milter tests will be SKIPPED (apt-get install libmilter-dev gcc python3-dev)."
fi
