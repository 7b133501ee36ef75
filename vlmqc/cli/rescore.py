"""``vlmqc rescore <run or multirun folder>``: score stored answers again with today's parser and metrics
(vlmqc/evaluation/rescore.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmqc.evaluation.rescore import rescore, run_folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmqc rescore", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run folder, or a multirun folder of run folders")
    args = parser.parse_args(argv)
    folders = run_folders(args.path)
    if not folders:
        print(f"{args.path}: no run folder (summary.json) here or one level down", file=sys.stderr)
        return 2
    complete = True
    for folder in folders:
        lines, done = rescore(folder)
        print("\n".join(lines), flush=True)
        complete &= done
    if not complete:
        print(f"{args.path}: some parts could not be rescored (above); they are as they were", file=sys.stderr)
    return 0 if complete else 1
