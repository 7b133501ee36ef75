"""``python -m vlmqc``: the same as the ``vlmqc`` command (vlmqc/cli/)."""

import sys

from vlmqc.cli import main

sys.exit(main())
