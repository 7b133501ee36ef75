"""The run record: what a trial writes in its folder, typed, and its readers.

Training writes the folder only through ``Records`` (vlmqc/runs/writer.py); the report, sweeps,
benchmarks and ``vlmqc rescore`` read it through the readers below, which return ``(records, problems)``
so that one bad line is reported, by file, line and field, and never stops the reading.

A run folder (schema version 2; folders written before versions existed are version 1):

- ``metrics.jsonl``: every logged step, one JSON object a line: ``trainer/global_step``, ``time``,
  ``train/…`` and ``eval/…`` (non-finite numbers as strings, "nan");
- ``predictions/step-<N>.jsonl``: every test prediction of an evaluation (``PredictionRow``);
- ``samples/step-<N>.jsonl`` and ``samples/images/<hash of the id>.png``: the inference samples
  for a fixed list of test ids (``Sample``), so trials line up row by row;
- ``summary.json`` (``Summary``): status, facts, the evaluation at the last step (``final``), the
  base model's at step 0 (``baseline``), the best evaluation step by ``best_metric`` (``best``), and
  the chance levels (``chance``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmqc.answers import Parsed
from vlmqc.runs.tracking import STEP

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: schema_version, best/baseline/chance, answer in prediction rows, hashed sample image names


# --- Typed records -------------------------------------------------------------------------------


def problem(where: str, field_name: str, what: str) -> str:
    """The one way a problem with a record is written: ``<file>[:<line>]: <field>: <what>``."""
    return f"{where}: {field_name}: {what}"


class RecordError(ValueError):
    """A record that does not fit its schema, named by file, line and field."""

    def __init__(self, where: str, field_name: str, what: str):
        self.where, self.field, self.problem = where, field_name, what
        super().__init__(problem(where, field_name, what))


class ParsedAnswer(typing.TypedDict):
    """What the parser read in a generated answer, as a prediction row keeps it."""

    verdict: str | None
    defects: list[list[str | None]]  # [position, type or None]
    target: str | None
    ok: bool


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (int fits float; bool fits neither int nor float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if typing.is_typeddict(hint):
        return isinstance(value, dict) and all(
            k in value and _fits(value[k], h) for k, h in typing.get_type_hints(hint).items()
        )
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in ("nan", "inf", "-inf")
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _name(hint: Any) -> str:
    return (
        hint.__name__
        if isinstance(hint, type) and not typing.get_args(hint)
        else str(hint).replace("typing.", "").replace("vlmqc.runs.records.", "")
    )


def _expected(hint: Any, value: Any) -> str:
    return f"expected {_name(hint)}, got {type(value).__name__} {str(value)[:60]!r}"


def checked(value: Any, hint: Any, where: str, field_name: str, problems: list[str]) -> Any:
    """``value`` if it fits ``hint``; else None, and a problem naming ``where`` and ``field_name``.
    For a value inside a field typed loosely (``facts``, ``chance``) that a reader relies on."""
    if _fits(value, hint):
        return value
    problems.append(problem(where, field_name, _expected(hint, value)))
    return None


class _Record:
    """``to_dict`` / ``from_dict`` with every field's type checked against its annotation."""

    _KEY: typing.ClassVar[tuple[str, ...]] = ()  # fields a row is nothing without: read back, a bad one drops the row

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def check(cls, name: str, value: Any, where: str = "") -> None:
        hints = cls._hints()
        if name not in hints:
            raise RecordError(where or cls.__name__, name, f"not a field of {cls.__name__}")
        if not _fits(value, hints[name]):
            raise RecordError(where or cls.__name__, name, _expected(hints[name], value))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for k, v in out.items():
            self.check(k, v)
        return {**getattr(self, "extra", {}), **out}

    @classmethod
    def from_dict(cls, d: Any, where: str = "", problems: list[str] | None = None):
        """The record in ``d``. With ``problems`` given, an ill-typed or missing field is reported
        there and left at its default, or None when it has none (the writer never writes None
        there, so None means "unreadable"); a bad ``_KEY`` field drops the row. Else it raises."""
        where = where or cls.__name__
        if not isinstance(d, dict):
            raise RecordError(where, "(line)", f"expected a JSON object, got {type(d).__name__}")
        d = cls._upgrade(dict(d))
        names = {f.name: f for f in dataclasses.fields(cls)}
        required = [
            n for n, f in names.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        kwargs, extra, found = {}, {}, []
        for k, v in d.items():
            if k not in names or k == "extra":
                extra[k] = v
                continue
            try:
                cls.check(k, v, where)
                kwargs[k] = v
            except RecordError as e:
                if problems is None or k in cls._KEY:
                    raise
                found.append(str(e))
        for n in required:
            if n not in d:
                if problems is None or n in cls._KEY:
                    raise RecordError(where, n, "missing")
                found.append(problem(where, n, "missing"))
            kwargs.setdefault(n, None)
        if problems is not None:
            problems += found
        if "extra" in names:
            kwargs["extra"] = extra
        return cls(**kwargs)

    @classmethod
    def _upgrade(cls, d: dict) -> dict:
        return d


@dataclass
class Summary(_Record):
    """``summary.json``. Metric dicts (final, baseline, best) map ``eval/…`` names to values, plus ``step``."""

    schema_version: int = SCHEMA_VERSION
    status: str | None = None  # running / completed / failed / interrupted
    reason: str | None = None
    step: int | None = None
    traceback: str | None = None
    run_name: str | None = None
    started: str | None = None
    ended: str | None = None
    runtime_seconds: float | None = None
    attempts: int = 0
    overrides: list[str] = field(default_factory=list)
    sweep: str | None = None
    resumed_from: str | None = None
    config_hash: str | None = None  # of the resolved config less NON_COMPUTING_KEYS: a rerun that differs is refused
    skipped_checkpoints: list[dict[str, Any]] = field(default_factory=list)  # damaged ones passed over on resume
    dropped_records: dict[str, Any] | None = None  # records after the resumed checkpoint's step, removed
    earlier_attempts: list[str] = field(default_factory=list)  # attempts/<n>/ kept by trainer.resume=false
    facts: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None
    final: dict[str, float] | None = None  # the evaluation at the last step
    baseline: dict[str, float] | None = None  # the base model's, at step 0: never a candidate for best
    best: dict[str, float] | None = None  # every metric at the evaluation step with the best best_metric
    best_metric: str | None = None
    chance: dict[str, Any] | None = (
        None  # {"answer": {task: prior answer}, "prior": {metric: v}, "uniform": {metric: v}, "constant": {metric: v}}
    )
    diagnosis: dict[str, Any] | None = None  # diagnose(): a flat training loss with answers at chance
    ceiling: dict[str, Any] | None = (
        None  # the pixel-difference detector on the test rows, no learning (vlmqc.data.report.pixel_ceiling)
    )
    rescored: dict[str, Any] | None = None  # {"parser_version", "schema_version", "time"} after python -m vlmqc.rescore
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    @classmethod
    def _upgrade(cls, d: dict) -> dict:
        d.setdefault("schema_version", 1)  # written before versions existed
        return d


@dataclass
class PredictionRow(_Record):
    """One test prediction of an evaluation, with the labels it is judged against."""

    _KEY = ("id", "task")
    id: str
    task: str
    prediction: str  # the generated text, as the model wrote it
    parsed: ParsedAnswer  # what the parser read in it
    verdict: str = ""
    defects: list[dict[str, str]] = field(default_factory=list)  # [{"position", "type"}]
    target: str | None = ""
    answer: str | None = ""  # an answer-only custom row's label text (version 2; version 1 did not keep it)
    question: str | None = ""  # what the row asks beyond its task, JSON (vlmqc/tasks.py): a choice row's options

    @classmethod
    def of(cls, example: dict, text: str, parsed: Parsed) -> PredictionRow:
        return cls(
            id=example["id"],
            task=example["task"],
            prediction=text,
            verdict=example.get("verdict") or "",
            defects=list(example.get("defects") or []),
            target=example.get("target") or "",
            answer=example.get("answer") or "",
            question=example.get("question") or "",
            parsed={
                "verdict": parsed.verdict,
                "defects": [list(d) for d in parsed.defects],
                "target": parsed.target,
                "ok": parsed.ok,
            },
        )

    def example(self) -> dict:
        """The labels, as ``vlmqc.evaluate.score`` reads a dataset row."""
        return {
            "id": self.id,
            "task": self.task,
            "verdict": self.verdict,
            "defects": self.defects,
            "target": self.target,
            "answer": self.answer,
            "question": self.question or "",
        }

    def parsed_answer(self) -> Parsed | None:
        """The parsed answer; None when the row read back had none that could be read."""
        p = self.parsed
        if p is None:
            return None
        return Parsed(
            verdict=p["verdict"],
            defects=tuple(tuple(d) for d in p["defects"]),
            target=p["target"],
            ok=p["ok"],
            text=self.prediction or "",
        )


@dataclass
class Sample(_Record):
    """One inference sample: a fixed test id's answer at one evaluation."""

    _KEY = ("id",)
    id: str
    step: int
    image: str  # relative to the run folder
    prompt: str
    truth: str
    prediction: str
    correct: bool


def sample_image(sample_id: str) -> str:
    """A sample's image file, relative to the run folder: a short hash of the id, so ids that
    differ only by a slash ("a/b", "a_b") do not collide and a long id makes no long name."""
    return f"samples/images/{hashlib.sha256(sample_id.encode()).hexdigest()[:16]}.png"


# --- Readers: (records, problems), never raising on a bad row ------------------------------------


def _jsonl(path: Path, problems: list[str]):
    """(line number, JSON value) of every line, a line that is not JSON reported as it comes, so
    the problems of a file stay in line order."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        problems.append(f"{path}: {e.strerror or e}")
        return
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{i}: not JSON ({e.msg})")


def read_rows(path: Path, cls: type[_Record]) -> tuple[list[tuple[int, Any]], list[str]]:
    """The records of a JSON-lines file with their line numbers, for a reader that names a row."""
    out: list[tuple[int, Any]] = []
    problems: list[str] = []
    for i, d in _jsonl(path, problems):
        try:
            out.append((i, cls.from_dict(d, f"{path}:{i}", problems)))
        except RecordError as e:
            problems.append(str(e))
    return out, problems


def read_predictions(path: Path) -> tuple[list[PredictionRow], list[str]]:
    rows, problems = read_rows(path, PredictionRow)
    return [r for _, r in rows], problems


def read_samples(path: Path) -> tuple[list[Sample], list[str]]:
    rows, problems = read_rows(path, Sample)
    return [r for _, r in rows], problems


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """``metrics.jsonl``: rows with an integer step and numeric (or "nan"-like) values."""
    out: list[dict] = []
    problems: list[str] = []
    for i, d in _jsonl(path, problems):
        where = f"{path}:{i}"
        if not isinstance(d, dict):
            problems.append(problem(where, "(line)", f"expected a JSON object, got {type(d).__name__}"))
            continue
        if checked(d.get(STEP), int, where, STEP, problems) is None:
            continue
        bad = [k for k, v in d.items() if checked(v, float, where, k, problems) is None]
        out.append({k: v for k, v in d.items() if k not in bad})
    return out, problems


def read_summary(path: Path) -> tuple[Summary | None, list[str]]:
    """The summary (None when there is none, or it is not a JSON object: the one problem says why);
    ill-typed fields are reported and left at their default."""
    if not path.exists():
        return None, []
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        return None, [f"{path}: {e.strerror or e}"]
    except UnicodeDecodeError as e:
        return None, [f"{path}: not UTF-8 text ({e.reason})"]
    except json.JSONDecodeError as e:
        return None, [f"{path}: not JSON ({e.msg}, line {e.lineno} column {e.colno})"]
    if not isinstance(d, dict):
        return None, [f"{path}: not a JSON object"]
    problems: list[str] = []
    return Summary.from_dict(d, str(path), problems), problems
