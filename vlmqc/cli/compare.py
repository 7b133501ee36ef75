"""``vlmqc compare``: run folders (or multirun folders of them) to one self-contained HTML report (vlmqc/compare/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmqc.compare.load import find_runs
from vlmqc.compare.report import build
from vlmqc.metrics import DEFAULT_METRIC


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="vlmqc compare", description="Compare trials in one self-contained HTML report."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or multirun folders that hold them")
    parser.add_argument(
        "--out", type=Path, help="report folder (default: <first argument>/report for a multirun, else ./report)"
    )
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help=f"the metric to highlight and plot the sweeps against (default {DEFAULT_METRIC})",
    )
    args = parser.parse_args(argv)
    run_dirs: list[Path] = []
    for path in args.paths:
        if not path.is_dir():
            parser.error(f"{path}: not a folder")  # exit status 2
        found = find_runs(path)
        if not found:
            parser.error(f"{path}: holds no run (no summary.json in it or in its subfolders)")
        run_dirs += [d for d in found if d.resolve() not in {r.resolve() for r in run_dirs}]
    first = args.paths[0]
    out = args.out or (first / "report" if not (first / "summary.json").exists() else Path("report"))
    report = build(run_dirs, out, args.metric, [str(p) for p in args.paths])
    print(report)
    return report
