"""Reading run folders for the report: summary.json, overrides, metrics, samples, predictions.

A record written by another version, edited by hand or cut off mid-write must not take the report
down. Each field the report uses is checked for its type as it is read (vlmqc.compare.check); a
bad one is left out and named in the notes, and the rest of the trial is read as usual.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from vlmqc.compare.check import Notes, Where, brief, is_bool, is_dict, is_int, is_metric, is_str, is_strs, metric_value
from vlmqc.prompts import Parsed
from vlmqc.records import METRICS, better
from vlmqc.track import STEP

_STEP_FILE = re.compile(r"step-(\d+)\.jsonl$")


def _metrics(where: Where, summary: dict, name: str) -> tuple[dict[str, float], int | None]:
    """A summary's ``{"step": N, "eval/...": v}`` block: its metrics and its step."""
    block = where.get(summary, name, is_dict, "an object of metrics")
    values, step = {}, None
    for key, v in (block or {}).items():
        if key == "step":
            step = where.get(block, key, is_int, "a whole number", f"{name}.step")
        elif (n := metric_value(v)) is not None:
            values[key] = n
        else:
            where.bad(f"{name}.{key}", v, "a number")
    return values, step


def _chance(where: Where, summary: dict) -> dict[str, float]:
    """Chance levels by metric: ``{"eval/…": v}``, or the run record's ``{"prior": {…}, "uniform": {…},
    "answer": {…}}``, where the better of the two guessers (by the metric's direction) is the level to beat."""
    chance = where.get(summary, "chance", is_dict, "an object of chance levels") or {}
    if not any(k in chance for k in ("prior", "uniform")):
        return _metrics(where, summary, "chance")[0]
    levels: dict[str, float] = {}
    for kind in ("prior", "uniform"):
        for key, v in _metrics(where, chance, kind)[0].items():
            if key not in levels or (key in METRICS and better(key, v, levels[key])):
                levels[key] = v
    return levels


@dataclass
class Trial:
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
        notes.bad(path, None, f"could not be read ({type(e).__name__}); the overrides are taken from summary.json or the run name.")
        return None
    if not is_strs(lines):
        Where(path, notes).bad("the overrides", lines, "a list of strings")
        return None
    return lines


def load_trial(run_dir: Path, notes: Notes) -> Trial:
    trial, typed = Trial(run_dir), None
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"a JSON {type(summary).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        trial.status, trial.reason = "unreadable", f"summary.json: {e}"
    else:
        w = Where(path, notes)
        trial.status = w.get(summary, "status", is_str, "a string") or "unknown"
        trial.reason = w.get(summary, "reason", is_str, "a string")
        trial.traceback = w.get(summary, "traceback", is_str, "a string")
        trial.run_name = w.get(summary, "run_name", is_str, "a string")
        trial.step = w.get(summary, "step", is_int, "a whole number")
        trial.runtime = metric_value(w.get(summary, "runtime_seconds", is_metric, "a number"))
        facts = w.get(summary, "facts", is_dict, "an object") or {}
        trial.dataset_hash = w.get(facts, "dataset_hash", is_str, "a string", "facts.dataset_hash")
        trial.sample_ids = w.get(facts, "sample_ids", is_strs, "a list of strings", "facts.sample_ids") or []
        trial.config = w.get(summary, "config", is_dict, "an object") or {}
        trial.final, _ = _metrics(w, summary, "final")
        trial.best, trial.best_step = _metrics(w, summary, "best")
        trial.baseline, _ = _metrics(w, summary, "baseline")
        trial.chance = _chance(w, summary)
        typed = w.get(summary, "overrides", is_strs, "a list of strings")
    # Hydra's own file first; the summary's copy; the run name, which holds the same overrides
    lines = _hydra_overrides(run_dir, notes)
    lines = lines if lines is not None else typed if typed is not None else split_overrides(trial.run_name or "")
    trial.overrides = parse_overrides(lines)
    return trial


def find_runs(arg: Path) -> list[Path]:
    """The run folder itself, or the run folders directly inside a multirun folder."""
    if (arg / "summary.json").exists():
        return [arg]
    return sorted(d for d in arg.iterdir() if d.is_dir() and (d / "summary.json").exists())


# --- The records beside summary.json --------------------------------------------------------------


def read_jsonl(path: Path, notes: Notes) -> list[tuple[Where, dict]]:
    """The objects of a JSON-lines file, each with its line; a line that is not one is noted."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        notes.bad(path, None, f"could not be read ({e.strerror or e}).")
        return []
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append((Where(path, notes, i), row))
        else:
            notes.bad(path, i, "not a JSON object (cut off mid-write?); left out.")
    return rows


def latest(folder: Path) -> tuple[int, Path] | None:
    """The last evaluation's file in ``samples/`` or ``predictions/``: (step, path)."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.jsonl") if (m := _STEP_FILE.search(p.name))]
    return max(found) if found else None


LOSSES = ("train/loss", "eval/loss")


def read_history(run_dir: Path, notes: Notes) -> list[tuple[int, dict[str, float]]]:
    """metrics.jsonl's losses by step; rows without a step are not points of a curve."""
    points = []
    for w, row in read_jsonl(run_dir / "metrics.jsonl", notes) if (run_dir / "metrics.jsonl").exists() else []:
        step = w.get(row, STEP, is_int, "a whole number")
        if step is None:
            continue
        losses = {}
        for key in LOSSES:
            if key in row:
                if (v := metric_value(row[key])) is not None:
                    losses[key] = v
                else:
                    w.bad(key, row[key], "a number")
        points.append((step, losses))
    return points


def inside(run_dir: Path, name: str) -> Path | None:
    """``run_dir / name`` if it stays in the run folder once symlinks and ``..`` are resolved."""
    try:
        root, path = run_dir.resolve(), (run_dir / name).resolve()  # an absolute name replaces run_dir, and is caught like ../
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
        return None
    return path if path.is_relative_to(root) and path != root else None


@dataclass
class Sample:
    id: str
    prediction: str | None
    truth: str | None
    correct: bool | None
    image: Path | None  # inside the run folder, checked
    source: tuple[Path, int]  # the samples file and line, for notes


def read_samples(run_dir: Path, path: Path, notes: Notes) -> list[Sample]:
    out = []
    for w, row in read_jsonl(path, notes):
        sid = w.get(row, "id", is_str, "a string", required=True, then="the row is left out")
        if sid is None:
            continue
        name = w.get(row, "image", is_str, "a string")
        image = inside(run_dir, name) if name is not None else None
        if name is not None and image is None:
            notes.bad(path, w.line, f"image {brief(name)} is not a path inside the run folder; not embedded.")
        out.append(Sample(sid, w.get(row, "prediction", is_str, "a string"), w.get(row, "truth", is_str, "a string"), w.get(row, "correct", is_bool, "true or false"), image, (path, w.line)))
    return out


def _is_defects(v) -> bool:
    return isinstance(v, list) and all(isinstance(d, dict) and isinstance(d.get("type"), str) and isinstance(d.get("position"), (str, type(None))) for d in v)


def _is_said(v) -> bool:
    return isinstance(v, list) and all(isinstance(d, list) and len(d) == 2 and isinstance(d[0], str) and isinstance(d[1], (str, type(None))) for d in v)


_LABELS = {"id": (is_str, "a string"), "task": (is_str, "a string"), "verdict": (is_str, "a string"),
           "defects": (_is_defects, "a list of {type, position}"), "target": (is_str, "a string"), "answer": (is_str, "a string")}
_PARSED = {"verdict": (is_str, "a string"), "defects": (_is_said, "a list of [position, type]"), "target": (is_str, "a string"), "ok": (is_bool, "true or false")}
_NOT_COUNTED = "the row is not counted"


def _parsed(w: Where, row: dict) -> Parsed | None:
    p = w.get(row, "parsed", is_dict, "an object (the parsed answer)", required=True, then=_NOT_COUNTED)
    if p is None:
        return None
    before = w.problems
    good = {k: w.get(p, k, ok, expected, f"parsed.{k}", required=k == "ok", then=_NOT_COUNTED) for k, (ok, expected) in _PARSED.items()}
    if w.problems > before:
        return None
    text = row.get("prediction")
    return Parsed(verdict=good["verdict"], defects=tuple(tuple(d) for d in good["defects"] or ()), target=good["target"], ok=good["ok"], text=text if isinstance(text, str) else "")


@dataclass
class Prediction:
    labels: dict  # id, task, verdict, defects, target, answer: checked, as vlmqc.evaluate reads them
    parsed: Parsed | None  # None: the answer as recorded could not be read, so the row is not counted


def read_predictions(path: Path, notes: Notes) -> list[Prediction]:
    """A predictions file's rows whose labels can be read; a row with a bad parsed answer keeps its labels."""
    out = []
    for w, row in read_jsonl(path, notes):
        labels = {k: w.get(row, k, ok, expected, required=k in ("id", "task"), then=_NOT_COUNTED) for k, (ok, expected) in _LABELS.items()}
        if not w.problems:
            out.append(Prediction(labels | {"defects": labels["defects"] or []}, _parsed(w, row)))
    return out
