"""``python -m vlmqc.compare``: the same as ``vlmqc compare`` (vlmqc/cli/compare.py)."""

import sys

from vlmqc.cli.compare import main

main(sys.argv[1:])
