"""MMAD's scoring: vlmqc's table against an independent computation of the benchmark's rules, on one
fixed set of answers written in MMAD's own answers format; chance levels of choice rows."""

from __future__ import annotations

import json
import random

import pytest
from mmad_rules import benchmark_table

from vlmqc.answers import Parsed
from vlmqc.evaluation import choice
from vlmqc.evaluation.scoring import chance, prior_answers, score
from vlmqc.metrics import METRICS, better, chance_level

YES_NO = {"A": "Yes", "B": "No"}
FOUR = {"A": "crack", "B": "scratch", "C": "hole", "D": "stain"}
# MMAD's question types, and the two its summary counts as Object Analysis
TYPES = [
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Structure",
    "Object Details",
]


def fixed_answers() -> tuple[list[dict], list[Parsed]]:
    """Rows of two sources with every question type, normal and anomalous queries, and answers
    drawn once from a seeded generator: right about two times in three, some unreadable."""
    rng = random.Random(7)
    rows, parsed = [], []
    for source in ("MVTec-AD", "VisA"):
        for k in range(12):
            normal = k % 3 == 0
            folder = "good" if normal else "crack"
            image = f"{source}/bottle/test/{folder}/{k:03d}.png"
            questions = [{"text": "Is there any defect in the object?", "options": YES_NO, "type": "Anomaly Detection"}]
            truths = ["B" if normal else "A"]
            for t in TYPES if not normal else ["Object Classification", "Object Details"]:
                questions.append({"text": f"{t}?", "options": FOUR, "type": t})
                truths.append(rng.choice("ABCD"))
            for q, truth in zip(questions, truths, strict=True):
                roll = rng.random()
                said = truth if roll < 0.65 else ("" if roll > 0.95 else rng.choice(sorted(q["options"])))
                rows.append(
                    {
                        "id": f"{image}#{len(rows)}",
                        "task": "choice",
                        "target": truth,
                        "question": json.dumps(
                            {"questions": [q], "source": source, "normal": normal, "image": image, "prompt": "?"}
                        ),
                    }
                )
                parsed.append(Parsed(target=said, ok=bool(said)))
    return rows, parsed


def test_vlmqc_scores_mmad_answers_as_the_benchmarks_rules_do():
    rows, parsed = fixed_answers()
    entries = choice.answers_file(rows, parsed)
    assert len(entries) == len(rows) and {"image", "question", "question_type", "correct_answer", "gpt_answer"} == set(
        entries[0]
    )
    assert entries[0]["question"]["text"].startswith("Question: Is there any defect in the object?\nA. Yes\nB. No")
    expected = benchmark_table(json.loads(json.dumps(entries)))  # as a file would hand it back
    got = choice.table(choice.answered(rows, parsed))
    assert set(got) == set(expected) == {"MVTec-AD", "VisA", "Average"}
    for source, row in expected.items():
        assert set(got[source]) == set(row), source
        for column, value in row.items():
            assert got[source][column] == pytest.approx(value), (source, column)
    # the table is not trivial: the cells differ, Anomaly Detection is not the plain accuracy
    assert len({round(v, 6) for r in got.values() for v in r.values()}) > 10
    detection = [e for e in entries if e["question_type"] == "Anomaly Detection" and e["image"].startswith("VisA")]
    plain = sum(e["gpt_answer"] == e["correct_answer"] for e in detection) / len(detection)
    assert got["VisA"]["Anomaly Detection"] != pytest.approx(plain)

    metrics = score(rows, parsed)
    assert metrics["mmad_average"] == pytest.approx(expected["Average"]["Average"])
    assert metrics["type/anomaly_detection"] == pytest.approx(expected["Average"]["Anomaly Detection"])
    assert metrics["type/object_analysis"] == pytest.approx(expected["Average"]["Object Analysis"])
    assert metrics["overkill"] == pytest.approx(expected["Average"]["Overkill"])
    assert metrics["miss"] == pytest.approx(expected["Average"]["Miss"])
    assert metrics["source/mvtec_ad"] == pytest.approx(expected["MVTec-AD"]["Average"])
    unread = sum(not p.ok for p in parsed)
    assert unread > 0 and metrics["unparseable_rate"] == pytest.approx(unread / len(rows))
    right = sum(p.target == r["target"] for r, p in zip(rows, parsed, strict=True))
    assert metrics["exact_match"] == pytest.approx(right / len(rows))
    assert all(f"eval/{k}" in METRICS for k in metrics)


def test_the_registry_knows_every_type_and_source_metric_with_its_direction():
    assert "eval/type/defect_localization" in METRICS and "eval/source/goodsad" in METRICS
    assert "eval/type/" not in METRICS and "eval/nope" not in METRICS
    assert better("eval/source/visa", 0.6, 0.5) and better("eval/overkill", 0.1, 0.2)
    assert not METRICS["eval/miss"].higher_is_better and METRICS["eval/type/x"].higher_is_better
    with pytest.raises(KeyError):
        METRICS["eval/unknown"]


def test_chance_of_choice_rows_is_a_uniform_guess_and_the_best_constant_letter():
    rows, _ = fixed_answers()
    train = [{**r, "target": "A"} for r in rows[:5]] + rows[5:7]
    levels = chance(rows, prior_answers(train))
    # a uniform guess: 1/2 on yes/no questions, 1/4 on the others
    n_yes_no = sum('"Yes"' in r["question"] for r in rows)
    assert levels["uniform"]["eval/exact_match"] == pytest.approx(
        (n_yes_no / 2 + (len(rows) - n_yes_no) / 4) / len(rows)
    )
    assert levels["uniform"]["eval/type/anomaly_detection"] == pytest.approx(0.5)
    assert levels["uniform"]["eval/overkill"] == pytest.approx(0.5)
    # one letter to all: the balanced detection accuracy of a constant answer is 1/2, whichever letter
    assert levels["constant"]["eval/type/anomaly_detection"] == pytest.approx(0.5)
    assert levels["constant"]["eval/overkill"] == 0.0  # "B" (no defect) to every query overkills nothing
    assert levels["constant"]["eval/miss"] == 0.0  # and "A" misses nothing
    best_letter = max(sum(r["target"] == letter for r in rows) / len(rows) for letter in "ABCD")
    assert levels["constant"]["eval/exact_match"] == pytest.approx(best_letter)
    assert prior_answers(train)["choice"]["target"] == "A"
    assert chance_level(levels, "eval/mmad_average") >= levels["uniform"]["eval/mmad_average"]
