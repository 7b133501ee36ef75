"""A trial's one writer: the run folder's records and, when tracking is on, W&B, fed the same stream.

The trial never writes a record or calls W&B itself; it tells its ``Recorder`` what happened
(the run started, these facts, these chance levels, this step's metrics, this evaluation, the
end) and the recorder writes the run folder (``Records``, rank 0 only) and the W&B run
(``Tracker``) alike, so the two never disagree.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vlmqc.metrics import chance_levels
from vlmqc.runs.records import PredictionRow, Sample
from vlmqc.runs.tracking import Tracker
from vlmqc.runs.writer import Records

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.records = Records(run_dir, enabled=enabled)
        self.tracker: Tracker | None = None
        self.enabled = enabled

    @property
    def summary(self) -> dict:
        return self.records.summary

    def update(self, **fields) -> None:
        """Summary fields of the run folder alone (W&B's summary gets its own, below)."""
        self.records.update(**fields)

    def track(
        self, logger_cfg, run_name: str, config: dict, resume_id: str | None, group: str | None, tags: list[str]
    ) -> None:
        """Start (or resume) the W&B run; its id and folder go into the summary, so a rerun resumes it."""
        self.tracker = Tracker(
            logger_cfg, self.records.dir, run_name, config, resume_id, group=group, tags=tags, enabled=self.enabled
        )
        if self.tracker.id:
            self.records.update(wandb={"id": self.tracker.id, "dir": self.tracker.dir, "mode": logger_cfg.mode})

    def facts(self, facts: dict) -> None:
        self.records.update(facts=facts)
        if self.tracker:
            self.tracker.config({"facts": facts})

    def levels(self, chance: dict, ceiling: dict | None) -> None:
        """What a model scores without learning (chance) and what a no-learning detector scores (ceiling)."""
        self.records.update(chance=chance, ceiling=ceiling)
        if self.tracker:
            # one level per metric, the one the summary, the report and the log show, and the guesser that scores it
            levels = chance_levels(chance)
            self.tracker.summary(
                {f"chance/{m}": level["value"] for m, level in levels.items()}
                | {f"chance_kind/{m}": level["kind"] for m, level in levels.items()}
            )
            if ceiling:
                self.tracker.summary({f"ceiling/{k}": v for k, v in ceiling.items() if k != "examples"})

    def log(self, metrics: dict, step: int) -> None:
        self.records.log(metrics, step)
        if self.tracker:
            self.tracker.log(metrics, step)

    def evaluation(
        self,
        step: int,
        scores: dict,
        rows: list[PredictionRow],
        samples: list[Sample],
        images: dict,
        metric: str,
        n_test: int,
        mmad: list[dict] | None = None,
    ) -> dict | None:
        """One evaluation: its metrics, every prediction (and, for MMAD's questions, its answers
        file), the inference samples, and the summary's final / baseline / best / diagnosis worked
        out again from metrics.jsonl. Returns the diagnosis."""
        self.log(scores, step)
        self.records.predictions(rows, step)
        self.records.mmad_answers(mmad or [], step)
        self.records.samples(samples, images, step)
        if self.tracker:
            self.tracker.samples(samples, images, step)
        self.records.update(**self.records.standing(metric, n_test))
        return self.records.summary.get("diagnosis")

    def completed(self, metric: str, n_test: int) -> None:
        """The summary's standing once more (the last evaluation may have come after the last log),
        and W&B's summary of it."""
        self.records.update(**self.records.standing(metric, n_test))
        if self.tracker:
            parts = {
                f"{part}/{k}": v
                for part in ("best", "baseline", "diagnosis")
                for k, v in (self.records.summary[part] or {}).items()
            }
            self.tracker.summary({"status": "completed", **parts})

    def close(self, status: str, reason: str | None, step: int | None, started: float) -> None:
        """The end, however it came: the status is written first, then W&B is closed. A status the
        disk will not take (full) is said in one line, and the record keeps ``running``, which every
        reader shows as ``died`` once this process has released the folder (vlmqc/runs/lock.py)."""
        try:
            self.records.update(
                status=status,
                reason=reason,
                step=step,
                ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                runtime_seconds=round(time.time() - started, 2),
            )
        except OSError as e:
            log.error("the trial's end (%s) could not be written to %s: %s", status, self.records.summary_path, e)
        if self.tracker is not None:
            self.tracker.summary({"status": status, "reason": reason})
            self.tracker.finish(status)
            self.tracker = None
