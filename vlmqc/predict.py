"""``python -m vlmqc.predict``: the same as ``vlmqc predict`` (vlmqc/cli/predict.py). Nothing is imported
unless run as a program: worker processes re-run the main module when they start."""

if __name__ == "__main__":
    import sys

    from vlmqc.cli.predict import main

    sys.exit(main())
