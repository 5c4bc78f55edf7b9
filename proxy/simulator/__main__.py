"""`python -m proxy.simulator ...` runs `seawall simulate ...`."""

import sys

from proxy.simulator.cli import main

raise SystemExit(main(sys.argv[1:]))
