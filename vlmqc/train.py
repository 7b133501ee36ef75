"""``python -m vlmqc.train``: the same as ``vlmqc train`` (vlmqc/cli/train.py). Nothing is imported
unless run as a program: worker processes re-run the main module when they start."""

if __name__ == "__main__":
    import sys

    from vlmqc.cli.train import cli

    sys.exit(cli())
