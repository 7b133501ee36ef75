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

from vlmqc.records import DEFAULT_METRIC
from vlmqc.track import read_json

log = logging.getLogger("vlmqc.sweep")


def trials(sweep_dir: Path) -> list[tuple[Path, dict | None]]:
    """Every trial folder of a sweep (one that Hydra started), with its record if it wrote one."""
    return [(d, read_json(d / "summary.json")) for d in sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))]


class SweepSummary(Callback):
    def __init__(self, metric: str = DEFAULT_METRIC):
        self.metric = metric

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        found = trials(sweep_dir)
        failed = []
        lines = [f"sweep {sweep_dir}: {len(found)} trial(s)"]
        for folder, summary in found:
            status = (summary or {}).get("status", "no record")
            value = ((summary or {}).get("final") or {}).get(self.metric)
            shown = f"{self.metric}={value:.4f}" if isinstance(value, float) else ""
            lines.append(f"  {status:<11} {folder.name}  {shown}")
            if status != "completed":
                reason = (summary or {}).get("reason") or "the trial wrote no summary.json"
                failed.append(f"{folder.name}: {status}: {reason}")
        print("\n".join(lines), flush=True)
        if failed:
            print(f"{len(failed)} of {len(found)} trial(s) did not complete:\n  " + "\n  ".join(failed), flush=True)
            print(f"compare them: python -m vlmqc.compare {sweep_dir}", flush=True)
            raise SystemExit(1)
        print(f"compare them: python -m vlmqc.compare {sweep_dir}", flush=True)
