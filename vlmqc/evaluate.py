"""Evaluation: scoring a model's answers against the examples' labels.

Answers are read into labels by ``vlmqc.prompts.parse_answer``; the metrics below are pure
functions of the labels and those parsed answers, so any saved set of answers can be rescored.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from vlmqc.labels import DefectType, Task, Verdict
from vlmqc.prompts import Parsed

PASS, DEFECTIVE = Verdict.passed.value, Verdict.defective.value


# --- Metrics: labels and parsed answers in, numbers out -----------------------------------------


def _kind(example: dict) -> str:
    """What an example is scored as: star, pass, defective, or answer (an answer-only custom row)."""
    if example["task"] == Task.star.value:
        return "star"
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

    Pass / defective rows (pair, diff, and custom rows with a verdict):
      verdict_accuracy      predicted verdict == true verdict, over these rows
      defect_recall         defective rows predicted defective / defective rows
      escape_rate           defective rows predicted pass / defective rows: the costly error; an
                            unparseable answer is neither recall nor escape, so the two need not sum to 1
      false_reject_rate     pass rows predicted defective / pass rows
      defect_type_accuracy  defective rows predicted defective with the true set of defect types
    Star rows and defective rows together:
      position_accuracy     star: predicted target == target; defective: predicted defective with
                            the true set of positions
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
        hits["escape"] += p.verdict == PASS
        hits["position"] += said_defective and {pos for pos, _ in p.defects} == {pos for pos, _ in truth}
        hits["type"] += said_defective and {t for _, t in p.defects} == {t for _, t in truth}
        hits["exact"] += said_defective and set(p.defects) == truth
    metrics = {
        "verdict_accuracy": ("verdict", "verdict"),
        "defect_recall": ("recall", "defective"),
        "escape_rate": ("escape", "defective"),
        "false_reject_rate": ("false_reject", "pass"),
        "position_accuracy": ("position", "position"),
        "defect_type_accuracy": ("type", "defective"),
        "exact_match": ("exact", "exact"),
        "unparseable_rate": ("unparseable", "structured"),
    }
    return {name: hits[hit] / rows[over] for name, (hit, over) in metrics.items() if rows[over]}


_CONFUSION_ORDER = [PASS, *(t.value for t in DefectType), DEFECTIVE, "untyped", "elsewhere", "unparseable"]


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
        return (_CONFUSION_ORDER.index(key), "") if key in _CONFUSION_ORDER else (len(_CONFUSION_ORDER), key)

    return {row: {col: counts[row][col] for col in sorted(counts[row], key=order)} for row in sorted(counts, key=order)}
