"""Metrics against numbers worked out by hand."""

from __future__ import annotations

import pytest
from conftest import compose_app

from vlmqc.answers import Parsed, parse_answer
from vlmqc.config import to_object
from vlmqc.evaluation.scoring import confusion, score


def row(task: str, verdict: str = "", defects=(), target: str = "", answer: str = "") -> dict:
    return {
        "id": "x",
        "task": task,
        "verdict": verdict,
        "defects": [{"position": p, "type": t} for p, t in defects],
        "target": target,
        "answer": answer,
    }


def defective(*defects) -> Parsed:
    return Parsed(verdict="defective", defects=tuple(defects), ok=True)


PASSED = Parsed(verdict="pass", ok=True)
UNREADABLE = Parsed()

# six pair rows, each a different outcome
PAIR = [
    (row("pair", "defective", [("C5", "missing")]), defective(("C5", "missing"))),  # all right
    (row("pair", "defective", [("U3", "shifted")]), PASSED),  # escape
    (row("pair", "pass"), defective(("D1", "deformed"))),  # false reject
    (
        row("pair", "defective", [("C5", "missing"), ("U3", "deformed")]),
        defective(("U3", "shifted"), ("C5", "missing")),
    ),  # positions right, a type wrong
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
            # per true defect (5): row 1's C5, row 4's C5; row 6 names the right type at the wrong position
            "defect_type_accuracy": 2 / 5,
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
    assert scored(free + PAIR[:2]) == pytest.approx(
        {
            "verdict_accuracy": 0.5,
            "defect_recall": 0.5,
            "escape_rate": 0.5,
            "position_accuracy": 0.5,
            "defect_type_accuracy": 0.5,
            "exact_match": 2 / 4,
            "unparseable_rate": 0.0,
        }
    )


def test_an_unreadable_answer_on_a_defective_row_is_an_escape():
    """Nothing flagged the defective product, so it ships: the old definition (escape = predicted
    pass) scored this row neither caught nor escaped."""
    assert scored([(row("pair", "defective", [("C5", "missing")]), UNREADABLE)]) == {
        "verdict_accuracy": 0.0,
        "defect_recall": 0.0,
        "escape_rate": 1.0,
        "position_accuracy": 0.0,
        "defect_type_accuracy": 0.0,
        "exact_match": 0.0,
        "unparseable_rate": 1.0,
    }


def test_recall_and_escape_sum_to_one_whatever_the_answers():
    pairs = PAIR + [
        (row("pair", "defective", [("U1", "bent")]), UNREADABLE),
        (row("diff", "defective", [("D2", "missing")]), Parsed(verdict="pass", ok=True)),
    ]
    metrics = scored(pairs + STAR)
    assert metrics["defect_recall"] == pytest.approx(3 / 6) and metrics["escape_rate"] == pytest.approx(3 / 6)
    assert metrics["defect_recall"] + metrics["escape_rate"] == 1


def test_defect_type_is_judged_at_each_true_position():
    """A right type at the wrong position is wrong; the old set-of-types comparison counted it right.
    Over true defects: one of this row's two defects is named at its position with its type."""
    swapped = [
        (
            row("pair", "defective", [("C5", "missing"), ("U3", "deformed")]),
            defective(("C5", "deformed"), ("U3", "missing")),
        )
    ]
    assert scored(swapped)["defect_type_accuracy"] == 0.0
    half = [
        (
            row("pair", "defective", [("C5", "missing"), ("U3", "deformed")]),
            defective(("C5", "missing"), ("U4", "deformed")),
        )
    ]
    assert scored(half)["defect_type_accuracy"] == 0.5
    # a pass verdict names nothing, whatever defects an answer might carry
    assert (
        scored(
            [
                (
                    row("pair", "defective", [("C5", "missing")]),
                    Parsed(verdict="pass", defects=(("C5", "missing"),), ok=True),
                )
            ]
        )["defect_type_accuracy"]
        == 0.0
    )


def test_no_examples_no_metrics():
    assert score([], []) == {}


def test_mismatched_lengths_and_unlabelled_rows_fail():
    with pytest.raises(ValueError, match="2 examples but 1"):
        score([PAIR[0][0], PAIR[1][0]], [PASSED])
    with pytest.raises(ValueError, match="no label"):
        score([row("custom")], [PASSED])


def test_scores_from_text_answers():
    cfg = to_object(compose_app(None, ["+prompt=long"]).prompt, "prompt")
    answers = [
        "Defective: missing terminal at C5.",
        "PASS",
        "NG, D1 bent",
        "defective: C5 missing, U3 offset",
        "hmm",
        "Defective, burnt at D8",
    ]
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


def test_every_metric_score_gives_is_in_the_registry_and_the_other_way_round():
    from test_choice_scoring import fixed_answers

    from vlmqc.metrics import METRICS

    mmad = score(*fixed_answers())
    given = {f"eval/{k}" for k in (*scored(PAIR + STAR), *mmad)}
    assert given <= METRICS.keys() | {f"eval/{k}" for k in mmad if k.startswith(("type/", "source/"))}
    assert all(name in METRICS for name in given)
    assert set(METRICS) - {"eval/loss"} <= given  # every fixed name is given by one task or the other


def test_chance_levels_are_the_score_of_the_prior_only_answer():
    from vlmqc.evaluation.scoring import chance, prior_answers

    train = [
        row("pair", "pass"),
        row("pair", "pass"),
        row("pair", "pass"),
        row("pair", "defective", [("C5", "missing")]),
        row("pair", "defective", [("C5", "bent"), ("U1", "missing")]),
        row("star", target="U2"),
        row("star", target="U2"),
        row("star", target="D9"),
    ]
    answers = prior_answers(train)
    assert (
        answers["pair"]["verdict"] == "pass"
        and answers["pair"]["position"] == "C5"
        and answers["pair"]["type"] == "missing"
    )
    assert answers["star"]["target"] == "U2"
    test = [
        row("pair", "pass"),
        row("pair", "defective", [("C5", "missing")]),
        row("pair", "defective", [("D1", "bent")]),
        row("star", target="U2"),
        row("star", target="C3"),
    ]
    levels = chance(test, answers)
    # by hand: every pair row answered "pass", every star row "U2"
    assert levels["prior"] == pytest.approx(
        {
            "eval/verdict_accuracy": 1 / 3,
            "eval/defect_recall": 0.0,
            "eval/escape_rate": 1.0,
            "eval/false_reject_rate": 0.0,
            "eval/position_accuracy": 1 / 4,  # one star row right of 2 star + 2 defective rows
            "eval/defect_type_accuracy": 0.0,
            "eval/exact_match": 2 / 5,
            "eval/unparseable_rate": 0.0,
        }
    )
    assert levels["uniform"] == {"eval/position_accuracy": 1 / 27}
    # a defective majority answers one defect at the most frequent position, with the most frequent type
    flipped = prior_answers(
        [
            row("pair", "defective", [("C5", "missing")]),
            row("pair", "defective", [("C5", "bent")]),
            row("pair", "defective", [("U1", "missing")]),
            row("pair", "pass"),
        ]
    )
    assert chance(test[:3], flipped)["prior"] == pytest.approx(
        {
            "eval/verdict_accuracy": 2 / 3,
            "eval/defect_recall": 1.0,
            "eval/escape_rate": 0.0,
            "eval/false_reject_rate": 1.0,
            "eval/position_accuracy": 1 / 2,
            "eval/defect_type_accuracy": 1 / 2,
            "eval/exact_match": 1 / 3,
            "eval/unparseable_rate": 0.0,
        }
    )


def test_the_constant_chance_level_is_the_best_answer_given_without_looking():
    """On a balanced split the prior-only answer is a coin's choice between "pass" and
    "defective at the most frequent position": the chance level must be the better of the two
    for each metric, or a model saying "pass" to everything looks far above chance."""
    from vlmqc.evaluation.scoring import chance, prior_answers

    train = [row("pair", "defective", [("C5", "missing")]), row("pair", "pass")]  # a tie: the prior picks one verdict
    test = [
        row("pair", "pass"),
        row("pair", "pass"),
        row("pair", "defective", [("C5", "missing")]),
        row("pair", "defective", [("D1", "bent")]),
    ]
    levels = chance(test, prior_answers(train))
    # by hand: "pass" to all: verdict 2/4, exact 2/4, escape 1, recall 0, false reject 0;
    # "defective at C5, missing" to all: verdict 2/4, exact 1/4, recall 1, escape 0, false reject 1,
    # position 1/2, type 1/2
    assert levels["constant"] == pytest.approx(
        {
            "eval/verdict_accuracy": 0.5,
            "eval/exact_match": 0.5,
            "eval/defect_recall": 1.0,
            "eval/escape_rate": 0.0,
            "eval/false_reject_rate": 0.0,
            "eval/position_accuracy": 0.5,
            "eval/defect_type_accuracy": 0.5,
            "eval/unparseable_rate": 0.0,
        }
    )
