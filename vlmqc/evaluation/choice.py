"""Scoring choice rows the way MMAD scores them, and MMAD's own answers file.

MMAD (ICLR 2025) asks multiple-choice questions about industrial images and reports a table: a
row per source dataset (the first segment of the query image's path: ``MVTec-AD``, ``VisA``...), a
column per question type, each cell the accuracy of that source's questions of that type, except:

- Anomaly Detection: the mean of the accuracy on normal queries (whose path contains ``good``:
  the row's ``normal``, vlmqc/data/mmad.py) and on anomalous ones, so that a model answering "no
  defect" to all scores 50, not the share of normal images;
- Overkill: normal queries answered wrong on Anomaly Detection / normal queries; Miss: anomalous
  queries answered wrong on it / anomalous queries;
- Average: a row's mean over its question types (Overkill and Miss left out); the ``Average`` row:
  each column's mean over the sources.

"Object Structure" and "Object Details" are counted as "Object Analysis", as MMAD's summary
does. Two choices where MMAD's published script (``evaluation/examples/helper/summary.py``)
differs: an answer it cannot read as A-E is dropped from its counts there and counted wrong here
(``eval/unparseable_rate`` says how many); a cell with no questions (a type one source lacks, a
source without normal queries) is left out of the means here, where the script writes 0 and
averages it in. Where every answer is a letter and every source has every type, the tables are the
same (tests/evaluation/test_choice_scoring.py scores one set of answers both ways).

``metrics`` flattens the table for the registry (vlmqc/metrics.py): ``type/<type>`` and the
``Overkill`` / ``Miss`` / ``Average`` of the ``Average`` row (``overkill``, ``miss``,
``mmad_average``), and ``source/<source>``: each source's Average.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vlmqc import choice
from vlmqc.answers import Parsed
from vlmqc.tasks import question

AD = "Anomaly Detection"
TYPES = (
    AD,
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
)
MERGED = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}
AVERAGE, OVERKILL, MISS = "Average", "Overkill", "Miss"


def slug(name: str) -> str:
    """A metric name's part for a type or source: ``Anomaly Detection`` -> ``anomaly_detection``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unnamed"


@dataclass(frozen=True)
class Answered:
    """One MMAD question as scored: where it comes from, and how right the answer is (1 or 0, or
    the expected share of a guess, for chance levels)."""

    source: str
    type: str
    normal: bool
    hit: float


def answered(rows: list[dict], parsed: list[Parsed]) -> list[Answered]:
    """Every question of the rows that carry MMAD's facts (a ``source``), with whether its letter is right."""
    out = []
    for row, p in zip(rows, parsed, strict=True):
        q = question(row)
        if "source" not in q:
            continue
        said = choice.split(p.target)
        for i, (qq, truth) in enumerate(zip(q["questions"], choice.split(row["target"]), strict=True)):
            letter = said[i] if i < len(said) else ""
            out.append(Answered(q["source"], MERGED.get(qq["type"], qq["type"]), q["normal"], float(letter == truth)))
    return out


def guessed(rows: list[dict]) -> list[Answered]:
    """The rows' questions answered by a uniform guess among their options: hit = 1 / options."""
    return [
        Answered(q["source"], MERGED.get(qq["type"], qq["type"]), q["normal"], 1 / len(qq["options"]))
        for q in (question(r) for r in rows)
        if "source" in q
        for qq in q["questions"]
    ]


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def table(answers: list[Answered]) -> dict[str, dict[str, float]]:
    """``{source: {column: value}}`` plus the ``Average`` row, values in [0, 1] (MMAD prints percent)."""
    sources = list(dict.fromkeys(a.source for a in answers))
    present = {a.type for a in answers}
    types = [t for t in TYPES if t in present] + sorted(present - set(TYPES))
    out: dict[str, dict[str, float]] = {}
    for source in sources:
        mine = [a for a in answers if a.source == source]
        row: dict[str, float] = {}
        for t in types:
            hits = [a.hit for a in mine if a.type == t]
            if hits:
                row[t] = _mean(hits)
        detection = [a for a in mine if a.type == AD]
        normal = _mean(a.hit for a in detection if a.normal)
        anomalous = _mean(a.hit for a in detection if not a.normal)
        if detection:
            row[AD] = _mean(v for v in (normal, anomalous) if v is not None)
        row[AVERAGE] = _mean(v for k, v in row.items())
        if normal is not None:
            row[OVERKILL] = 1 - normal
        if anomalous is not None:
            row[MISS] = 1 - anomalous
        out[source] = row
    columns = [*types, AVERAGE, OVERKILL, MISS]
    average = {c: _mean(r[c] for r in out.values() if c in r) for c in columns}
    if out:
        out[AVERAGE] = {c: v for c, v in average.items() if v is not None}
    return out


def flatten(tab: dict[str, dict[str, float]]) -> dict[str, float]:
    """The table as metric names (without ``eval/``): the Average row's columns and each source's Average."""
    if AVERAGE not in tab:
        return {}
    named = {AVERAGE: "mmad_average", OVERKILL: "overkill", MISS: "miss"}
    out = {named.get(c, f"type/{slug(c)}"): v for c, v in tab[AVERAGE].items()}
    out |= {f"source/{slug(s)}": r[AVERAGE] for s, r in tab.items() if s != AVERAGE and AVERAGE in r}
    return out


def metrics(rows: list[dict], parsed: list[Parsed]) -> dict[str, float]:
    return flatten(table(answered(rows, parsed)))


def answers_file(rows: list[dict], parsed: list[Parsed]) -> list[dict]:
    """The answers in MMAD's own format (its evaluation scripts' ``answers_<n>_shot_<model>.json``):
    one entry a question, ``gpt_answer`` the letter read ("" where none was), so that its
    ``caculate_accuracy_mmad`` scores them."""
    out = []
    for row, p in zip(rows, parsed, strict=True):
        q = question(row)
        if "source" not in q:
            continue
        said = choice.split(p.target)
        for i, (qq, truth) in enumerate(zip(q["questions"], choice.split(row["target"]), strict=True)):
            out.append(
                {
                    "image": q["image"],
                    "question": {"type": "text", "text": choice.question_text(qq["text"], qq["options"])},
                    "question_type": qq["type"],
                    "correct_answer": truth,
                    "gpt_answer": said[i] if i < len(said) else "",
                }
            )
    return out
