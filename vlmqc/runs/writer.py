"""The run folder's one writer (``Records``): metrics.jsonl, predictions, samples and summary.json,
each written atomically; every summary field checked against ``Summary`` where it is written.
A trial writes through its Recorder (vlmqc/runs/recorder.py), which feeds W&B the same stream."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from vlmqc.files import write_atomic, write_json
from vlmqc.runs.records import SCHEMA_VERSION, PredictionRow, Sample, Summary, read_metrics, read_summary
from vlmqc.runs.standing import diagnose, evaluations, standing
from vlmqc.runs.tracking import STEP

log = logging.getLogger(__name__)


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


class Records:
    """The run folder's one writer. ``enabled=False`` (ranks other than 0) reads but never writes.

    ``summary`` is the summary as a dict (what is on disk); ``update`` checks every field against
    ``Summary`` before writing, so an ill-typed or misspelled field fails where it is written.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.dir, self.enabled = run_dir, enabled
        self.summary_path = run_dir / "summary.json"
        summary, problems = read_summary(self.summary_path)
        for p in problems:
            log.warning("%s", p)
        # a new folder is this version; an older one stays what it was until rescored
        self.summary = summary.to_dict() if summary else {"schema_version": SCHEMA_VERSION}

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(
                json.dumps({STEP: step, "time": round(time.time(), 3), **{k: _finite(v) for k, v in metrics.items()}})
                + "\n"
            )

    def _metric_rows(self) -> list[dict]:
        rows, problems = read_metrics(self.dir / "metrics.jsonl") if (self.dir / "metrics.jsonl").exists() else ([], [])
        for p in problems:
            log.warning("%s", p)
        return rows

    def evaluations(self) -> dict[int, dict]:
        return evaluations(self._metric_rows())

    def standing(self, metric: str, n_test: int) -> dict:
        """The summary's ``final``, ``baseline``, ``best``, ``best_metric`` and ``diagnosis``, from
        metrics.jsonl as it is now (earlier attempts' evaluations included)."""
        rows = self._metric_rows()
        fields = standing(evaluations(rows), metric)
        fields["diagnosis"] = diagnose(rows, fields["final"], self.summary.get("chance"), metric, n_test)
        return fields

    def samples(self, samples: list[Sample], images: dict, step: int) -> Path | None:
        """The samples of one evaluation; ``images`` maps each id to its PIL image, saved once."""
        if not self.enabled:
            return None
        for s in samples:
            path = self.dir / s.image
            if not path.exists():  # the same test image at every step
                path.parent.mkdir(parents=True, exist_ok=True)
                images[s.id].convert("RGB").save(path)
        out = self.dir / "samples" / f"step-{step:06d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        write_atomic(out, "".join(json.dumps(s.to_dict(), sort_keys=True) + "\n" for s in samples).encode())
        return out

    def predictions(self, rows: list[PredictionRow], step: int) -> Path | None:
        """Every test prediction of one evaluation, with the labels it is judged against."""
        if not self.enabled:
            return None
        out = self.dir / "predictions" / f"step-{step:06d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        write_atomic(out, "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rows).encode())
        return out

    def mmad_answers(self, entries: list[dict], step: int) -> Path | None:
        """The same evaluation's answers in MMAD's own format (``step-N.mmad.json`` beside
        ``step-N.jsonl``), which the benchmark's scoring script reads unchanged."""
        if not self.enabled or not entries:
            return None
        out = self.dir / "predictions" / f"step-{step:06d}.mmad.json"
        out.parent.mkdir(exist_ok=True)
        write_json(out, entries)
        return out

    def update(self, **fields) -> None:
        for k, v in fields.items():
            Summary.check(k, v, str(self.summary_path))
        self.summary.update(fields)
        if self.enabled:
            write_json(self.summary_path, self.summary)
