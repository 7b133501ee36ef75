"""``python -m vlmqc.inspect``: the same as ``vlmqc preview`` (vlmqc/cli/preview.py). Nothing is imported
unless run as a program: worker processes re-run the main module when they start."""

if __name__ == "__main__":
    import sys

    from vlmqc.cli.preview import cli

    sys.exit(cli())
