"""The end of a sweep: which trials completed, which failed and why, and the exit status.

Hydra runs the trials of ``python -m vlmqc.train -m ...`` (in this process with the basic
launcher, or as separate processes with submitit); a failed trial records itself and returns,
so the sweep goes on. Registered in conf/train.yaml as a Hydra callback, ``SweepSummary`` reads
every trial's ``summary.json`` when the sweep ends, prints them, and makes the command exit with
status 1 when any trial did not complete, so a script or a CI job sees the failure.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from vlmqc.metrics import DEFAULT_METRIC
from vlmqc.runs.lock import DIED, DIED_REASON, status_of
from vlmqc.runs.records import Summary, read_summary

log = logging.getLogger(__name__)


def trials(sweep_dir: Path) -> list[tuple[Path, Summary | None, list[str]]]:
    """Every trial folder of a sweep (one that Hydra started), with its record if it wrote a
    readable one, and the problems reading it (why it is unreadable, or its ill-typed fields)."""
    return [
        (d, *read_summary(d / "summary.json"))
        for d in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))
    ]


class SweepSummary(Callback):
    def __init__(self, metric: str = DEFAULT_METRIC):
        self.metric = metric

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        found = trials(sweep_dir)
        failed = []
        lines = [f"sweep {sweep_dir}: {len(found)} trial(s)"]
        for folder, summary, problems in found:
            if summary is None:
                status, reason = (
                    ("unreadable", "; ".join(problems))
                    if problems
                    else ("no record", "the trial wrote no summary.json")
                )
            else:
                status = status_of(folder, summary.status) or "unknown"
                reason = DIED_REASON if status == DIED else summary.reason or "no reason recorded"
            value = (summary.final or {}).get(self.metric) if summary else None
            shown = f"{self.metric}={float(value):.4f}" if value is not None else ""
            lines.append(f"  {status:<11} {folder.name}  {shown}")
            lines += [f"    {p}" for p in problems] if summary else []
            if status != "completed":
                failed.append(f"{folder.name}: {status}: {reason}")
        print("\n".join(lines), flush=True)
        if failed:
            print(f"{len(failed)} of {len(found)} trial(s) did not complete:\n  " + "\n  ".join(failed), flush=True)
            print(f"compare them: python -m vlmqc.compare {sweep_dir}", flush=True)
            raise SystemExit(1)
        print(f"compare them: python -m vlmqc.compare {sweep_dir}", flush=True)
