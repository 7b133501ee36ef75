import sys

from vlmqc.compare.cli import main

main(sys.argv[1:])
