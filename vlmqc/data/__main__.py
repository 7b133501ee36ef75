"""``python -m vlmqc.data``: the same as ``vlmqc data`` (vlmqc/cli/data.py)."""

from vlmqc.cli.data import cli

cli()
