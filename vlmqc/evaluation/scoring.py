"""Evaluation: scoring a model's answers against the examples' labels.

Answers are read into labels by ``vlmqc.prompts.parse_answer``; the metrics below are pure
functions of the labels and those parsed answers, so any saved set of answers can be rescored.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

from vlmqc import choice as letters
from vlmqc.answers import Parsed
from vlmqc.evaluation import choice
from vlmqc.labels import POSITIONS, Task, Verdict
from vlmqc.metrics import CONFUSION_ORDER, better, chance_levels
from vlmqc.tasks import options

PASS, DEFECTIVE = Verdict.passed.value, Verdict.defective.value


# --- Metrics: labels and parsed answers in, numbers out -----------------------------------------


def _kind(example: dict) -> str:
    """What an example is scored as: star, choice, pass, defective, or answer (an answer-only row)."""
    if example["task"] in (Task.star.value, Task.choice.value):
        return example["task"]
    verdict = example.get("verdict") or ""
    if verdict in (PASS, DEFECTIVE):
        return verdict
    if example.get("answer"):
        return "answer"
    raise ValueError(f"example {example.get('id')!r} has no label to score against")


def _same_text(a: str, b: str) -> bool:
    """Answers equal up to Unicode form, case, spacing and a final full stop."""

    def canon(s: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", s).casefold().split()).rstrip(".。!！ ")

    return canon(a) == canon(b)


def score(examples: list[dict], parsed: list[Parsed]) -> dict[str, float]:
    """Inspection metrics of parsed answers, one per example, in the examples' order.

    Definitions, as an inspection line counts (``vlmqc.records.METRICS`` holds the one-line form):

    Pass / defective rows (pair, diff, and custom rows with a verdict):
      verdict_accuracy      predicted verdict == true verdict, over these rows
      defect_recall         defective rows predicted defective / defective rows
      escape_rate           defective rows NOT predicted defective / defective rows. An answer that
                            cannot be read flags nothing, so a defective product behind it escapes:
                            defect_recall + escape_rate == 1 exactly
      false_reject_rate     pass rows predicted defective / pass rows (an unreadable answer on a
                            pass row is not a reject; it shows in unparseable_rate)
      defect_type_accuracy  judged per position, over the true defects of defective rows: a true
                            defect counts as right when the answer (verdict defective) names its
                            position with its type. A right type at another position is wrong.
                            Defective rows without listed defects add nothing to it
    Star rows and defective rows together:
      position_accuracy     star: predicted target == target; defective: predicted defective with
                            the true set of positions
    Choice rows (vlmqc/choice.py): exact_match when every question's letter is right; on MMAD's
      rows also MMAD's table, by question type and source dataset (vlmqc/evaluation/choice.py)
    All rows:
      exact_match           star: target right; pass: verdict right; defective: verdict and the set
                            of (position, type) right; answer-only custom rows (verdict "", no
                            structured labels): the answer text equals the label text up to case,
                            spacing and a final full stop (``Parsed.text`` holds the answer)
      unparseable_rate      answers that could not be read (not ``ok``) / rows with structured
                            labels; answer-only rows are left out, a free answer need not parse

    A metric with no rows to average over (escape_rate on star data) is left out of the dict.
    """
    if len(examples) != len(parsed):
        raise ValueError(f"{len(examples)} examples but {len(parsed)} parsed answers")
    hits, rows = Counter(), Counter()
    for example, p in zip(examples, parsed, strict=True):
        kind = _kind(example)
        rows["exact"] += 1
        if kind == "answer":
            hits["exact"] += _same_text(p.text, example["answer"])
            continue
        rows["structured"] += 1
        hits["unparseable"] += not p.ok
        if kind == "choice":
            hits["exact"] += p.ok and p.target == example["target"]
            continue
        if kind == "star":
            right = p.target is not None and p.target == example["target"]
            rows["position"] += 1
            hits["position"] += right
            hits["exact"] += right
            continue
        rows["verdict"] += 1
        hits["verdict"] += p.verdict == kind
        if kind == PASS:
            rows["pass"] += 1
            hits["false_reject"] += p.verdict == DEFECTIVE
            hits["exact"] += p.verdict == PASS
            continue
        truth = {(d["position"], d["type"]) for d in example.get("defects") or []}
        said_defective = p.verdict == DEFECTIVE
        rows["defective"] += 1
        rows["position"] += 1
        hits["recall"] += said_defective
        hits["escape"] += not said_defective
        hits["position"] += said_defective and {pos for pos, _ in p.defects} == {pos for pos, _ in truth}
        rows["true_defects"] += len(truth)
        hits["type"] += sum(said_defective and d in p.defects for d in truth)
        hits["exact"] += said_defective and set(p.defects) == truth
    metrics = {
        "verdict_accuracy": ("verdict", "verdict"),
        "defect_recall": ("recall", "defective"),
        "escape_rate": ("escape", "defective"),
        "false_reject_rate": ("false_reject", "pass"),
        "position_accuracy": ("position", "position"),
        "defect_type_accuracy": ("type", "true_defects"),
        "exact_match": ("exact", "exact"),
        "unparseable_rate": ("unparseable", "structured"),
    }
    out = {name: hits[hit] / rows[over] for name, (hit, over) in metrics.items() if rows[over]}
    return out | choice.metrics(examples, parsed)


def _predicted_label(p: Parsed, position: str | None) -> str:
    if not p.ok:
        return "unparseable"
    if p.verdict == PASS:
        return PASS
    if position is None:  # a pass row, or a defective row without positions: what the answer reported first
        return next((t for _, t in p.defects if t), "untyped")
    said = [t for pos, t in p.defects if pos == position]
    if not said:
        return "elsewhere"
    return next((t for t in said if t), "untyped")


def confusion(examples: list[dict], parsed: list[Parsed]) -> dict[str, dict[str, int]]:
    """Counts of true label -> predicted label, for a confusion matrix of defect types.

    Rows are "pass" or a true defect type; columns are "pass", "unparseable", or the type the
    answer gives at the true defect's position. Each true defect counts once, matched by its
    position alone, so a multi-defect example adds one count per defect; the answer's defects at
    other positions are not counted. Other columns: "elsewhere" (defective, but nothing said at
    this position), "untyped" (the position named without a type). A pass row predicted defective
    counts under the first type the answer names. Star and answer-only rows are skipped.
    """
    if len(examples) != len(parsed):
        raise ValueError(f"{len(examples)} examples but {len(parsed)} parsed answers")
    counts: dict[str, Counter] = {}
    for example, p in zip(examples, parsed, strict=True):
        kind = _kind(example)
        if kind == PASS:
            truths = [(PASS, None)]
        elif kind == DEFECTIVE:
            truths = [(d["type"], d["position"]) for d in example.get("defects") or []] or [(DEFECTIVE, None)]
        else:
            continue
        for label, position in truths:
            counts.setdefault(label, Counter())[_predicted_label(p, position)] += 1

    def order(key: str) -> tuple[int, str]:
        return (CONFUSION_ORDER.index(key), "") if key in CONFUSION_ORDER else (len(CONFUSION_ORDER), key)

    return {row: {col: counts[row][col] for col in sorted(counts[row], key=order)} for row in sorted(counts, key=order)}


# --- Chance levels: what a model that never looked at the image would score ---------------------


def _most_frequent(values) -> str | None:
    counts = Counter(v for v in values if v)
    # ties go to the first label in sorted order, so the answer does not depend on row order
    return min(counts, key=lambda v: (-counts[v], v)) if counts else None


def prior_answers(train: list[dict]) -> dict[str, dict]:
    """Per task, the answer of a model that learned only the train split's label frequencies:
    the majority verdict; if that is defective, one defect at the most frequent position with
    the most frequent type; the most frequent star position; the most frequent answer text."""
    out = {}
    for task in sorted({r["task"] for r in train}):
        rows = [r for r in train if r["task"] == task]
        defects = [d for r in rows for d in r.get("defects") or []]
        out[task] = {
            "verdict": _most_frequent(r.get("verdict") for r in rows),
            "position": _most_frequent(d["position"] for d in defects),
            "type": _most_frequent(d["type"] for d in defects),
            # a choice row's letters, one per question, each counted
            "target": _most_frequent(t for r in rows for t in letters.split(r.get("target"))),
            "answer": _most_frequent(r.get("answer") for r in rows if not r.get("verdict")),
        }
    return out


def _prior_parsed(answer: dict | None, row: dict) -> Parsed:
    answer, task = answer or {}, row["task"]
    if task == Task.choice.value:  # the one letter to every question of the row
        letter = answer.get("target")
        return Parsed(target=letters.join([letter] * len(options(row))), ok=letter is not None)
    if task == Task.star.value:
        return Parsed(target=answer.get("target"), ok=answer.get("target") is not None)
    verdict = answer.get("verdict")
    defects = ((answer["position"], answer["type"]),) if verdict == DEFECTIVE and answer.get("position") else ()
    return Parsed(verdict=verdict, defects=defects, ok=verdict is not None, text=answer.get("answer") or "")


def chance(test: list[dict], answers: dict[str, dict]) -> dict:
    """Chance levels of every metric on these test rows, for the summary's ``chance``:

    - ``prior``: ``score`` of the prior-only answers (``prior_answers`` of the train split), the
      same answer for every row of a task;
    - ``uniform``: position_accuracy of a uniformly guessed position, 1/27 (star data, where the
      answer is one position of the board); on choice rows, the expected score of a uniformly
      guessed letter (1 / number of options a question) on exact_match and MMAD's table;
    - ``constant``: each metric's best over the constant answers (``_best_constant``): the level
      the report and the plateau diagnosis hold a trial against;
    - ``answer``: the prior-only answers themselves, so ``vlmqc.rescore`` can score them again;
    - ``level``: each metric's one level to beat and the kind that scores it
      (``vlmqc.metrics.chance_levels``), what W&B, the report and the log show.
    """
    prior = score(test, [_prior_parsed(answers.get(r["task"]), r) for r in test])
    uniform = {"eval/position_accuracy": 1 / len(POSITIONS)} if any(r["task"] == Task.star.value for r in test) else {}
    chosen = [r for r in test if r["task"] == Task.choice.value]
    if chosen:
        exact = sum(math.prod(1 / len(o) for o in options(r)) for r in chosen) / len(test)
        uniform = {"eval/exact_match": exact} | {
            f"eval/{k}": v for k, v in choice.flatten(choice.table(choice.guessed(chosen))).items()
        }
    out = {
        "answer": answers,
        "prior": {f"eval/{k}": v for k, v in prior.items()},
        "uniform": uniform,
        "constant": _best_constant(test, answers),
    }
    return {**out, "level": chance_levels(out)}


def _best_constant(test: list[dict], answers: dict[str, dict]) -> dict[str, float]:
    """Each metric's best score (in its direction) over the answers a model can give without
    looking: the prior-only one, "pass" to every row, and "defective" with the most frequent
    defect to every row. On a balanced split the prior-only answer is a coin's choice between
    the last two, and the other one can score far higher (exact match 0.5 for "pass" where the
    prior's "defective at C5, missing" scores 0.007): a trial must beat both to beat chance. On
    choice rows: each letter any question offers, given to every question."""
    variants = [answers] + [
        {task: {**a, "verdict": verdict} if a.get("verdict") else a for task, a in answers.items()}
        for verdict in (PASS, DEFECTIVE)
    ]
    offered = sorted({k for r in test if r["task"] == Task.choice.value for o in options(r) for k in o})
    variants += [{**answers, Task.choice.value: {**answers.get(Task.choice.value, {}), "target": k}} for k in offered]
    best: dict[str, float] = {}
    for variant in variants:
        for k, v in score(test, [_prior_parsed(variant.get(r["task"]), r) for r in test]).items():
            name = f"eval/{k}"
            if name not in best or better(name, v, best[name]):
                best[name] = v
    return best
