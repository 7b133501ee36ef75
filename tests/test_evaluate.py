"""Metrics against numbers worked out by hand."""

from __future__ import annotations

import pytest
from conftest import compose_app

from vlmqc.config import to_object
from vlmqc.evaluate import confusion, score
from vlmqc.prompts import Parsed, parse_answer


def row(task: str, verdict: str = "", defects=(), target: str = "", answer: str = "") -> dict:
    return {"id": "x", "task": task, "verdict": verdict, "defects": [{"position": p, "type": t} for p, t in defects], "target": target, "answer": answer}


def defective(*defects) -> Parsed:
    return Parsed(verdict="defective", defects=tuple(defects), ok=True)


PASSED = Parsed(verdict="pass", ok=True)
UNREADABLE = Parsed()

# six pair rows, each a different outcome
PAIR = [
    (row("pair", "defective", [("C5", "missing")]), defective(("C5", "missing"))),  # all right
    (row("pair", "defective", [("U3", "shifted")]), PASSED),  # escape
    (row("pair", "pass"), defective(("D1", "deformed"))),  # false reject
    (row("pair", "defective", [("C5", "missing"), ("U3", "deformed")]), defective(("U3", "shifted"), ("C5", "missing"))),  # positions right, a type wrong
    (row("pair", "pass"), UNREADABLE),  # unparseable
    (row("diff", "defective", [("D9", "discoloured")]), defective(("D8", "discoloured"))),  # type right, position wrong
]
STAR = [
    (row("star", target="C5"), Parsed(target="C5", ok=True)),
    (row("star", target="U1"), Parsed(target="U2", ok=True)),
    (row("star", target="D9"), UNREADABLE),
]


def scored(pairs):
    return score([e for e, _ in pairs], [p for _, p in pairs])


def test_pair_metrics():
    # 2 pass rows (an unparseable one, a false reject); 4 defective rows: predicted defective 3, pass 1
    assert scored(PAIR) == pytest.approx(
        {
            "verdict_accuracy": 3 / 6,  # rows 1, 4, 6
            "defect_recall": 3 / 4,
            "escape_rate": 1 / 4,
            "false_reject_rate": 1 / 2,
            "position_accuracy": 2 / 4,  # rows 1 and 4
            "defect_type_accuracy": 2 / 4,  # rows 1 and 6
            "exact_match": 1 / 6,  # row 1
            "unparseable_rate": 1 / 6,
        }
    )


def test_star_metrics_leave_out_what_star_data_cannot_measure():
    assert scored(STAR) == pytest.approx({"position_accuracy": 1 / 3, "exact_match": 1 / 3, "unparseable_rate": 1 / 3})


def test_mixed_data_pools_positions_of_star_and_defective_rows():
    metrics = scored(PAIR + STAR)
    assert metrics["position_accuracy"] == pytest.approx((2 + 1) / (4 + 3))
    assert metrics["exact_match"] == pytest.approx((1 + 1) / 9)
    assert metrics["unparseable_rate"] == pytest.approx(2 / 9)
    assert metrics["escape_rate"] == pytest.approx(1 / 4)


def test_answer_only_rows_count_in_exact_match_alone():
    free = [
        (row("custom", answer="Scratch on the lid."), Parsed(text="  scratch ON the lid ")),
        (row("custom", answer="Scratch on the lid."), Parsed(verdict="defective", ok=True, text="A dent on the lid.")),
    ]
    assert scored(free) == {"exact_match": 0.5}
    assert scored(free + PAIR[:2]) == pytest.approx({"verdict_accuracy": 0.5, "defect_recall": 0.5, "escape_rate": 0.5, "position_accuracy": 0.5,
                                                      "defect_type_accuracy": 0.5, "exact_match": 2 / 4, "unparseable_rate": 0.0})


def test_an_unreadable_answer_on_a_defective_row_is_neither_caught_nor_escaped():
    assert scored([(row("pair", "defective", [("C5", "missing")]), UNREADABLE)]) == {
        "verdict_accuracy": 0.0, "defect_recall": 0.0, "escape_rate": 0.0, "position_accuracy": 0.0,
        "defect_type_accuracy": 0.0, "exact_match": 0.0, "unparseable_rate": 1.0,
    }


def test_no_examples_no_metrics():
    assert score([], []) == {}


def test_mismatched_lengths_and_unlabelled_rows_fail():
    with pytest.raises(ValueError, match="2 examples but 1"):
        score([PAIR[0][0], PAIR[1][0]], [PASSED])
    with pytest.raises(ValueError, match="no label"):
        score([row("custom")], [PASSED])


def test_scores_from_text_answers():
    cfg = to_object(compose_app(None, ["+prompt=long"]).prompt, "prompt")
    answers = ["Defective: missing terminal at C5.", "PASS", "NG, D1 bent", "defective: C5 missing, U3 offset", "hmm", "Defective, burnt at D8"]
    parsed = [parse_answer(cfg, text, e["task"]) for (e, _), text in zip(PAIR, answers, strict=True)]
    assert parsed == [p for _, p in PAIR]
    assert score([e for e, _ in PAIR], parsed) == scored(PAIR)


def test_confusion_counts_each_true_defect_at_its_position():
    assert confusion([e for e, _ in PAIR], [p for _, p in PAIR]) == {
        "pass": {"deformed": 1, "unparseable": 1},
        "missing": {"missing": 2},
        "shifted": {"pass": 1},
        "discoloured": {"elsewhere": 1},
        "deformed": {"shifted": 1},
    }


def test_confusion_names_untyped_positions_and_skips_star_rows():
    examples = [row("pair", "defective", [("C5", "missing"), ("U3", "bent")]), row("pair", "pass"), STAR[0][0]]
    parsed = [defective(("C5", None)), defective(("U1", None)), STAR[0][1]]
    assert confusion(examples, parsed) == {"pass": {"untyped": 1}, "missing": {"untyped": 1}, "bent": {"elsewhere": 1}}
