"""Reading run folders for the report: summary.json, overrides, metrics, samples, predictions.

A record written by another version, edited by hand or cut off mid-write must not take the report
down. The records are read through vlmqc.records' readers, which check every field against the
run record's types; a bad one is left out and named in the notes, and the rest of the trial is read
as usual. What is the report's own: the overrides (Hydra's file, the summary's copy or the run
name), the chance level to beat, and sample images confined to the run folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vlmqc.compare.notes import Notes
from vlmqc.metrics import CHANCE_KINDS, METRICS, better, chance_of
from vlmqc.runs.lock import DIED, DIED_REASON, status_of
from vlmqc.runs.records import (
    PredictionRow,
    Sample,
    Summary,
    checked,
    problem,
    read_metrics,
    read_predictions,
    read_rows,
    read_summary,
)
from vlmqc.runs.tracking import STEP

_STEP_FILE = re.compile(r"step-(\d+)\.jsonl$")


def _values(block: dict[str, float] | None) -> dict[str, float]:
    """A summary's ``{"step": N, "eval/...": v}`` block's metrics as floats ("nan" written as a string)."""
    return {k: float(v) for k, v in (block or {}).items() if k != "step"}


def _chance(summary: Summary, where: str, problems: list[str]) -> dict[str, tuple[float, str | None]]:
    """Chance levels by metric, each with the guesser that scores it: from ``{"eval/…": v}`` (no
    kind), or the run record's ``{"prior": {…}, "uniform": {…}, "constant": {…}, …}``, where the
    one level is ``vlmqc.metrics.chance_of``'s, as the summary, W&B and the log show it."""
    chance = summary.chance or {}
    if not any(k in chance for k in CHANCE_KINDS):
        flat = _values(checked(chance, dict[str, float], where, "chance", problems))
        return {m: (v, None) for m, v in flat.items()}
    kinds = {
        kind: _values(checked(chance.get(kind), dict[str, float] | None, where, f"chance.{kind}", problems))
        for kind in CHANCE_KINDS
    }
    return {m: found for m in set().union(*kinds.values()) if (found := chance_of(kinds, m)) is not None}


@dataclass
class TrialRow:
    """One run folder, as the report sees it; every field typed, missing ones empty."""

    dir: Path
    status: str = "unknown"
    reason: str | None = None
    traceback: str | None = None
    run_name: str | None = None
    step: int | None = None
    runtime: float | None = None
    dataset_hash: str | None = None
    sample_ids: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # the resolved config
    overrides: dict[str, str] = field(default_factory=dict)  # the command line's, as typed: key -> value
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    baseline: dict[str, float] = field(default_factory=dict)  # the base model's evaluation at step 0
    chance: dict[str, float] = field(default_factory=dict)  # what guessing scores on this dataset
    chance_kind: dict[str, str | None] = field(default_factory=dict)  # the guesser that scores it
    ceiling: dict[str, float] = field(
        default_factory=dict
    )  # what the pixel-difference detector scores on this trial's test rows, no learning
    plateau: dict | None = None  # the summary's diagnosis when it found the plateau: a flat loss, answers at chance
    diagnosis: dict | None = None  # the summary's diagnosis, each metric against its chance level
    label: str = ""  # short and unique among the compared trials: legends and column heads

    @property
    def name(self) -> str:
        return self.run_name or self.dir.name

    @property
    def dataset(self) -> str:
        return self.dataset_hash or "unknown"

    def metric(self, kind: str, name: str) -> float | None:
        return getattr(self, kind).get(name)

    def below_chance(self, metric: str) -> bool:
        """The final value is no better than guessing, in the metric's direction (vlmqc.records.METRICS)."""
        final, chance = self.final.get(metric), self.chance.get(metric)
        return final is not None and chance is not None and metric in METRICS and not better(metric, final, chance)


def split_overrides(text: str) -> list[str]:
    """``a=1,b=[x,y]`` -> ``["a=1", "b=[x,y]"]``: Hydra's override dirname, commas in brackets kept."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if "=" in p]


def parse_overrides(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, _, value = line.partition("=")
        out[key.lstrip("+~")] = value
    return out


def _hydra_overrides(run_dir: Path, notes: Notes) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return None
    try:
        lines = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001 - whatever the YAML parser says, the run name holds the same overrides
        notes.extend(
            path,
            [
                f"{path}: could not be read ({type(e).__name__}); the overrides are taken from summary.json or "
                f"the run name."
            ],
        )
        return None
    problems: list[str] = []
    lines = checked(lines, list[str], str(path), "(file)", problems)
    notes.extend(path, problems)
    return lines


def load_trial(run_dir: Path, notes: Notes) -> TrialRow:
    trial = TrialRow(run_dir)
    path = run_dir / "summary.json"
    summary, problems = read_summary(path)
    if summary is None:
        trial.status, trial.reason = "unreadable", "; ".join(problems) or f"{path}: missing"
    else:
        where = str(path)
        trial.status, trial.reason, trial.traceback = summary.status or "unknown", summary.reason, summary.traceback
        if status_of(run_dir, trial.status) == DIED:  # its record says running, and no process holds its folder
            trial.status, trial.reason = DIED, DIED_REASON
        trial.run_name, trial.step, trial.config = summary.run_name, summary.step, summary.config
        trial.runtime = float(summary.runtime_seconds) if summary.runtime_seconds is not None else None
        trial.dataset_hash = checked(
            summary.facts.get("dataset_hash"), str | None, where, "facts.dataset_hash", problems
        )
        trial.sample_ids = (
            checked(summary.facts.get("sample_ids"), list[str] | None, where, "facts.sample_ids", problems) or []
        )
        trial.final, trial.best, trial.baseline = (
            _values(summary.final),
            _values(summary.best),
            _values(summary.baseline),
        )
        trial.best_step = checked((summary.best or {}).get("step"), int | None, where, "best.step", problems)
        levels = _chance(summary, where, problems)
        trial.chance = {m: v for m, (v, _) in levels.items()}
        trial.chance_kind = {m: k for m, (_, k) in levels.items()}
        ceiling = checked(summary.ceiling, dict[str, float] | None, where, "ceiling", problems) or {}
        trial.ceiling = {k: float(v) for k, v in ceiling.items() if k.startswith("eval/")}
        diagnosis = checked(summary.diagnosis, dict | None, where, "diagnosis", problems)
        trial.diagnosis = diagnosis
        trial.plateau = diagnosis if diagnosis and diagnosis.get("plateau") is True else None
        notes.extend(path, problems)
    # Hydra's own file first; the summary's copy; the run name, which holds the same overrides
    lines = _hydra_overrides(run_dir, notes)
    lines = (
        lines
        if lines is not None
        else summary.overrides
        if summary and summary.overrides
        else split_overrides(trial.run_name or "")
    )
    trial.overrides = parse_overrides(lines)
    return trial


def find_runs(arg: Path) -> list[Path]:
    """The run folder itself, or the run folders directly inside a multirun folder."""
    if (arg / "summary.json").exists():
        return [arg]
    return sorted(d for d in arg.iterdir() if d.is_dir() and (d / "summary.json").exists())


# --- The records beside summary.json --------------------------------------------------------------


def latest(folder: Path) -> tuple[int, Path] | None:
    """The last evaluation's file in ``samples/`` or ``predictions/``: (step, path)."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.jsonl") if (m := _STEP_FILE.search(p.name))]
    return max(found) if found else None


LOSSES = ("train/loss", "eval/loss")


def read_history(run_dir: Path, notes: Notes) -> list[tuple[int, dict[str, float]]]:
    """metrics.jsonl's losses by step; rows without a step are not points of a curve."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows, problems = read_metrics(path)
    notes.extend(path, problems)
    return [(r[STEP], {k: float(r[k]) for k in LOSSES if k in r}) for r in rows]


def inside(run_dir: Path, name: str) -> Path | None:
    """``run_dir / name`` if it stays in the run folder once symlinks and ``..`` are resolved."""
    try:
        root, path = (
            run_dir.resolve(),
            (run_dir / name).resolve(),
        )  # an absolute name replaces run_dir, and is caught like ../
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
        return None
    return path if path.is_relative_to(root) and path != root else None


@dataclass
class Shown:
    """A sample as the page shows it: the record, its image if inside the run folder, and where it was read."""

    record: Sample
    image: Path | None
    source: tuple[Path, int]  # the samples file and line, for notes


def read_samples(run_dir: Path, path: Path, notes: Notes) -> list[Shown]:
    rows, problems = read_rows(path, Sample)
    out = []
    for line, s in rows:
        image = inside(run_dir, s.image) if s.image is not None else None
        if s.image is not None and image is None:
            problems.append(
                problem(
                    f"{path}:{line}", "image", f"{s.image[:60]!r} is not a path inside the run folder; not embedded"
                )
            )
        out.append(Shown(s, image, (path, line)))
    notes.extend(path, problems)
    return out


def read_prediction_rows(path: Path, notes: Notes) -> list[PredictionRow]:
    """A predictions file's rows whose labels can be read; a row whose parsed answer cannot keeps its labels, and is
    not counted."""
    rows, problems = read_predictions(path)
    notes.extend(path, problems)
    return rows
