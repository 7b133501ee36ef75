"""``python -m vlmqc.serve``: the same as ``vlmqc serve`` (vlmqc/cli/serve.py)."""

import sys

from vlmqc.cli.serve import main

sys.exit(main())
