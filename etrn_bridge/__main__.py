"""``python -m etrn_bridge`` is the ``etrn-bridge`` command."""

import sys

from etrn_bridge.cli import main

sys.exit(main())
