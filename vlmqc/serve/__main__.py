import sys

from vlmqc.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
