"""``python -m vlmqc.rescore``: the same as ``vlmqc rescore`` (vlmqc/cli/rescore.py). Nothing is imported
unless run as a program: worker processes re-run the main module when they start."""

if __name__ == "__main__":
    import sys

    from vlmqc.cli.rescore import main

    sys.exit(main())
