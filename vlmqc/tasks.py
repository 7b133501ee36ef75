"""What a row asks, the answer a model is trained on, and how a generated answer is read: the answer tasks.

- ``inspection``: a verdict with the defects' positions and types, or the star's position; the
  answer is written from the labels by the prompt config (vlmqc/prompts.py) and read back by
  vlmqc/answers.py; scored by ``vlmqc.evaluation.scoring.score``'s inspection metrics;
- ``choice``: a letter among given options, one or several questions a turn (vlmqc/choice.py);
  scored by accuracy, and on MMAD's rows by its table (vlmqc/evaluation/choice.py);
- ``text``: a free answer text (custom and conversation rows without structured labels), scored
  by exact match.

A row says what it asks beyond its task's defaults in ``question``, a JSON object (empty for the
synthetic tasks): ``prompt`` (its own instruction: a conversation's user turn, MMAD's question
list), ``questions`` (choice: each question's ``text``, ``options`` and ``type``), ``source`` and
``normal`` (MMAD: the source dataset, whether the query is a good product), ``grid`` (a grid laid
over a real image: its rows and columns, named in the prompt) and ``types`` (the defect names an
answer may use beyond the built-in ones). Every consumer reads it here: the collator, generation,
the recorder, rescoring.
"""

from __future__ import annotations

import json

from vlmqc import choice
from vlmqc.answers import Parsed, parse_answer
from vlmqc.config import PromptConfig
from vlmqc.labels import GRID_ROWS, Task
from vlmqc.prompts import instruction, render_answer

INSPECTION, CHOICE, TEXT = "inspection", "choice", "text"


def question(row: dict) -> dict:
    """The row's ``question`` object (``{}`` where it has none)."""
    q = row.get("question") or "{}"
    return json.loads(q) if isinstance(q, str) else dict(q)


def answer_task(row: dict) -> str:
    if row["task"] == Task.choice.value:
        return CHOICE
    if row["task"] == Task.star.value or row.get("verdict"):
        return INSPECTION
    return TEXT


def options(row: dict) -> list[dict[str, str]]:
    """Each question's options of a choice row, in order."""
    return [q["options"] for q in question(row).get("questions") or []]


def grid_note(rows: int, columns: int) -> str:
    """How a grid over the image is named, for the prompt: its rows and columns, and an example."""
    names = GRID_ROWS[rows]
    return (
        f"Positions on the image: {rows} row(s) named {', '.join(names)} from top to bottom and {columns} column(s) "
        f"numbered 1-{columns} from left to right, written row then column (e.g. {names[len(names) // 2]}"
        f"{(columns + 1) // 2})."
    )


def prompt_text(cfg: PromptConfig, row: dict, images: int) -> str:
    """The instruction the model is given for this row, shown as ``images`` images."""
    q = question(row)
    if q.get("prompt"):
        return q["prompt"]
    text = instruction(cfg, row["task"], images)
    return f"{text} {grid_note(*q['grid'])}" if q.get("grid") else text


def answer_text(cfg: PromptConfig, row: dict) -> str:
    """The answer the model is trained on: a row with its own prompt keeps its own answer text
    (a conversation's assistant turn); a choice row's letters; else the prompt's rendering of the labels."""
    if question(row).get("prompt") and row.get("answer"):
        return row["answer"]
    if row["task"] == Task.choice.value:
        return choice.render(row["target"])
    return render_answer(cfg, row)


def parse(cfg: PromptConfig, text: str, row: dict) -> Parsed:
    """What a generated answer says, read by the row's task; never raises on a string. A choice
    answer's letters go in ``target`` (one per question, joined by commas); ``ok`` when every
    question's letter was read."""
    if row["task"] == Task.choice.value:
        letters = choice.parse_choices(text, options(row))
        return Parsed(target=choice.join(letters), ok=all(letters), text=text)
    types = tuple(question(row).get("types") or ())
    return parse_answer(cfg, text, row["task"], types)
