"""The run record's types, readers and writer, and the metric registry."""

from __future__ import annotations

import json

import pytest
from conftest import compose_app
from PIL import Image

from vlmqc.answers import Parsed
from vlmqc.metrics import DEFAULT_METRIC, METRICS, better
from vlmqc.runs.records import (
    PredictionRow,
    RecordError,
    Sample,
    Summary,
    read_metrics,
    read_predictions,
    read_rows,
    read_samples,
    read_summary,
    sample_image,
)
from vlmqc.runs.standing import evaluations, standing
from vlmqc.runs.sweep import SweepSummary
from vlmqc.runs.writer import Records

EXAMPLE = {
    "id": "test-1",
    "task": "pair",
    "verdict": "defective",
    "defects": [{"position": "C5", "type": "missing"}],
    "target": "",
    "answer": "",
    "question": "",
}


def test_prediction_rows_and_samples_round_trip():
    parsed = Parsed(verdict="defective", defects=(("C5", "missing"), ("U3", None)), ok=True, text="NG C5 missing, U3")
    row = PredictionRow.of(EXAMPLE, "NG C5 missing, U3", parsed)
    again = PredictionRow.from_dict(json.loads(json.dumps(row.to_dict())))
    assert again == row and again.parsed_answer() == parsed and again.example() == EXAMPLE
    # a choice row keeps what it asks (its options), so that rescoring reads its answers again
    asked = {**EXAMPLE, "task": "choice", "verdict": "", "defects": [], "target": "B", "question": '{"questions": []}'}
    row = PredictionRow.of(asked, "B.", Parsed(target="B", ok=True, text="B."))
    assert PredictionRow.from_dict(json.loads(json.dumps(row.to_dict()))).example() == asked
    sample = Sample(id="a/b", step=4, image=sample_image("a/b"), prompt="p", truth="t", prediction="x", correct=False)
    assert Sample.from_dict(json.loads(json.dumps(sample.to_dict()))) == sample


def test_an_ill_typed_record_names_its_file_line_and_field():
    with pytest.raises(RecordError, match=r"preds.jsonl:3: correct: expected bool, got str"):
        Sample.from_dict(
            {"id": "a", "step": 1, "image": "i", "prompt": "p", "truth": "t", "prediction": "x", "correct": "yes"},
            "preds.jsonl:3",
        )
    with pytest.raises(RecordError, match="step: expected int, got bool"):
        Sample(id="a", step=True, image="i", prompt="p", truth="t", prediction="x", correct=True).to_dict()


def test_readers_report_bad_rows_one_by_one_and_keep_the_good_ones(tmp_path):
    good = PredictionRow.of(EXAMPLE, "pass", Parsed(verdict="pass", ok=True)).to_dict()
    path = tmp_path / "step-000002.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(good),
                "{not json",
                json.dumps({**good, "defects": "C5"}),
                json.dumps([1]),
                json.dumps({**good, "id": None}),
                json.dumps(good),
            ]
        )
        + "\n"
    )
    rows, problems = read_predictions(path)
    assert len(rows) == 3  # the ill-typed defects field falls back to its default, the row is kept
    assert problems == [
        f"{path}:2: not JSON (Expecting property name enclosed in double quotes)",
        f"{path}:3: defects: expected list[dict[str, str]], got str 'C5'",
        f"{path}:4: (line): expected a JSON object, got list",
        f"{path}:5: id: expected str, got NoneType 'None'",
    ]
    samples, problems = read_samples(tmp_path / "absent.jsonl")
    assert samples == [] and len(problems) == 1
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        '{"trainer/global_step": 2, "eval/exact_match": 0.5, "eval/loss": "nan"}\n{"trainer/global_step": '
        '"x"}\n{"trainer/global_step": 4, "eval/exact_match": [1]}\n'
    )
    rows, problems = read_metrics(metrics)
    assert (
        rows == [{"trainer/global_step": 2, "eval/exact_match": 0.5, "eval/loss": "nan"}, {"trainer/global_step": 4}]
        and len(problems) == 2
    )


def test_read_back_a_row_keeps_its_key_and_names_each_bad_field_in_line_order(tmp_path):
    good = PredictionRow.of(EXAMPLE, "pass", Parsed(verdict="pass", ok=True)).to_dict()
    path = tmp_path / "step-000004.jsonl"
    bad_parsed = {**good, "parsed": {**good["parsed"], "defects": [["C5", 3]]}}
    no_prediction = {k: v for k, v in good.items() if k != "prediction"}
    path.write_text(
        "\n".join([json.dumps(bad_parsed), "{cut", json.dumps({**good, "parsed": None}), json.dumps(no_prediction)])
        + "\n"
    )
    rows, problems = read_rows(path, PredictionRow)
    assert [line for line, _ in rows] == [1, 3, 4]
    assert (
        [r.parsed for _, r in rows[:2]] == [None, None]
        and rows[2][1].prediction is None
        and rows[2][1].parsed_answer().verdict == "pass"
    )
    assert problems == [
        f"{path}:1: parsed: expected ParsedAnswer, got dict " + repr(str(bad_parsed["parsed"])[:60]),
        f"{path}:2: not JSON (Expecting property name enclosed in double quotes)",
        f"{path}:3: parsed: expected ParsedAnswer, got NoneType 'None'",
        f"{path}:4: prediction: missing",
    ]
    with pytest.raises(RecordError, match="prediction: missing"):
        PredictionRow.from_dict(no_prediction)  # without a problem list, nothing is let through
    with pytest.raises(RecordError, match="parsed: expected ParsedAnswer"):
        PredictionRow(**{**good, "parsed": None}).to_dict()  # the writer never writes the None a reader leaves
    summary = tmp_path / "summary.json"
    summary.write_text('{"status": "comp')
    assert read_summary(summary) == (None, [f"{summary}: not JSON (Unterminated string starting at, line 1 column 12)"])


def test_an_ill_typed_summary_is_reported_field_by_field(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(
        json.dumps(
            {
                "status": "completed",
                "step": "8",
                "attempts": 2,
                "best": {"eval/exact_match": "high"},
                "lock": {"pid": 1},
            }
        )
    )
    summary, problems = read_summary(path)
    assert summary.status == "completed" and summary.attempts == 2 and summary.step is None and summary.best is None
    assert summary.schema_version == 1  # no version: written before versions existed
    assert summary.extra == {"lock": {"pid": 1}} and summary.to_dict()["lock"] == {"pid": 1}
    assert [p.split(": ")[1] for p in problems] == ["step", "best"]
    path.write_text("[1, 2]")
    assert read_summary(path) == (None, [f"{path}: not a JSON object"])


def test_the_writer_refuses_an_ill_typed_or_unknown_summary_field(tmp_path):
    records = Records(tmp_path)
    records.update(status="running", attempts=1)
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "schema_version": 2,
        "status": "running",
        "attempts": 1,
    }
    with pytest.raises(RecordError, match="attempts: expected int"):
        records.update(attempts="2")
    with pytest.raises(RecordError, match="statuss: not a field of Summary"):
        records.update(statuss="completed")
    assert Summary.from_dict(json.loads((tmp_path / "summary.json").read_text())).attempts == 1


def test_sample_image_names_are_short_and_distinct(tmp_path):
    names = {sample_image(i) for i in ("a/b", "a_b", "a b", "A/b", "x" * 5000)}
    assert len(names) == 5 and all(len(n) < 50 and n.startswith("samples/images/") for n in names)
    records = Records(tmp_path)
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    samples = [
        Sample(id=i, step=0, image=sample_image(i), prompt="p", truth="t", prediction="x", correct=True)
        for i in ("a/b", "a_b")
    ]
    records.samples(samples, {"a/b": red, "a_b": blue}, 0)
    assert Image.open(tmp_path / samples[0].image).getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(tmp_path / samples[1].image).getpixel((0, 0)) == (0, 0, 255)
    assert read_samples(tmp_path / "samples" / "step-000000.jsonl") == (samples, [])


def test_the_registry_gives_directions_and_the_default_metric():
    assert better("eval/exact_match", 0.6, 0.5) and not better("eval/exact_match", 0.5, 0.5)
    assert (
        better("eval/escape_rate", 0.1, 0.2)
        and better("eval/loss", 1.0, 2.0)
        and not better("eval/unparseable_rate", 0.3, 0.2)
    )
    with pytest.raises(KeyError, match="eval/acc"):
        better("eval/acc", 1, 0)
    assert DEFAULT_METRIC in METRICS and all(m.definition and m.chance for m in METRICS.values())
    assert compose_app("train", []).sweep_metric == DEFAULT_METRIC
    assert SweepSummary().metric == DEFAULT_METRIC


def test_best_is_an_evaluation_step_never_the_baseline():
    rows = [
        {
            "trainer/global_step": 0,
            "eval/exact_match": 0.9,
            "eval/escape_rate": 0.0,
        },  # the base model: better than any trained step
        {"trainer/global_step": 0, "eval/loss": 3.0, "eval/runtime": 1.2},
        {"trainer/global_step": 2, "train/loss": 2.0},
        {"trainer/global_step": 4, "eval/exact_match": 0.5, "eval/escape_rate": 0.4},
        {"trainer/global_step": 4, "eval/loss": 2.0},
        {"trainer/global_step": 6, "eval/exact_match": 0.2, "eval/escape_rate": 0.1},
        {"trainer/global_step": 8, "eval/exact_match": 0.4, "eval/escape_rate": 0.3},
        {
            "trainer/global_step": 6,
            "eval/exact_match": 0.3,
            "eval/escape_rate": 0.2,
        },  # 6 again after a resume: the later values
    ]
    evals = evaluations(rows)
    assert evals[0] == {"eval/exact_match": 0.9, "eval/escape_rate": 0.0, "eval/loss": 3.0}  # eval/runtime is no metric
    by_match = standing(evals, "eval/exact_match")
    assert by_match["best"] == {"step": 4, "eval/exact_match": 0.5, "eval/escape_rate": 0.4, "eval/loss": 2.0}
    assert by_match["baseline"]["step"] == 0 and by_match["final"] == {
        "step": 8,
        "eval/exact_match": 0.4,
        "eval/escape_rate": 0.3,
    }
    assert standing(evals, "eval/escape_rate")["best"]["step"] == 6  # lower is better; 0.2 after the resume
    only_base = standing({0: {"eval/exact_match": 1.0}}, "eval/exact_match")  # failed before a second evaluation
    assert (
        only_base["best"] is None
        and only_base["final"] is None
        and only_base["baseline"] == {"step": 0, "eval/exact_match": 1.0}
    )


def test_diagnose_finds_the_plateau_only_where_the_loss_is_flat_and_the_answers_at_chance():
    from vlmqc.runs.standing import diagnose

    chance = {"prior": {"eval/exact_match": 0.1}, "uniform": {"eval/exact_match": 0.037}}
    flat = [{"train/loss": 0.371 + 0.001 * (i % 2)} for i in range(30)]  # the study's 3-epoch, no-warm-up curve
    falling = [{"train/loss": 2.0 * 0.9**i} for i in range(30)]
    at_chance, learnt = {"eval/exact_match": 0.11}, {"eval/exact_match": 0.75}
    # two standard errors of 0.1 on 300 rows are 0.035: 0.11 is chance, 0.75 is not
    d = diagnose(flat, at_chance, chance, "eval/exact_match", 300)
    assert (
        d["plateau"]
        and d["loss_flat"]
        and d["at_chance"]
        and d["chance"] == 0.1
        and d["margin"] == pytest.approx(2 * (0.09 / 300) ** 0.5)
    )
    assert abs(d["loss_change"]) < 0.02
    assert not diagnose(falling, at_chance, chance, "eval/exact_match", 300)["plateau"], (
        "still learning: the loss falls"
    )
    assert diagnose(falling, at_chance, chance, "eval/exact_match", 300)["loss_change"] > 0.2
    assert not diagnose(flat, learnt, chance, "eval/exact_match", 300)["plateau"], (
        "converged: a flat loss with right answers"
    )
    short = diagnose(flat[:5], at_chance, chance, "eval/exact_match", 300)
    assert short["loss_flat"] is None and not short["plateau"], "five logs are too few to call a curve flat"
    assert (
        diagnose(flat, None, chance, "eval/exact_match", 300) is None
        and diagnose(flat, at_chance, None, "eval/exact_match", 300) is None
    )
    # a lower-is-better metric: at chance means not below the level by more than the margin
    esc = {"constant": {"eval/escape_rate": 0.0}, "prior": {"eval/escape_rate": 1.0}}
    assert diagnose(flat, {"eval/escape_rate": 0.5}, esc, "eval/escape_rate", 300)["chance"] == 0.0


def test_diagnose_names_every_metric_at_or_above_chance():
    """A trial whose exact match is at chance but whose verdicts are right: the plateau is the sweep
    metric's, and each other metric says where it stands against its own level, named by kind."""
    from vlmqc.runs.standing import diagnose

    chance = {
        "prior": {"eval/exact_match": 0.0, "eval/verdict_accuracy": 0.5, "eval/unparseable_rate": 0.0},
        "constant": {"eval/exact_match": 0.5, "eval/verdict_accuracy": 0.5, "eval/unparseable_rate": 0.0},
    }
    flat = [{"train/loss": 0.371 + 0.001 * (i % 2)} for i in range(30)]
    final = {"eval/exact_match": 0.5, "eval/verdict_accuracy": 0.877, "eval/unparseable_rate": 0.0}
    d = diagnose(flat, final, chance, "eval/exact_match", 300)
    assert d["plateau"] and d["metric"] == "eval/exact_match" and (d["chance"], d["kind"]) == (0.5, "constant")
    verdict = d["metrics"]["eval/verdict_accuracy"]
    assert verdict["at_chance"] is False and verdict["plateau"] is False and verdict["kind"] == "prior"
    assert "eval/unparseable_rate" not in d["metrics"]  # a guess is always readable: its level cannot be beaten
    assert set(d["metrics"]) == {"eval/exact_match", "eval/verdict_accuracy"}


def test_one_chance_level_per_metric_named_by_its_kind():
    """Balanced pair data: the prior-only answer ("defective at the most frequent position") scores
    about 0 exact match, answering "pass" to all scores 0.5: the level is 0.5, a constant answer's,
    in the summary's level as everywhere it is shown (chance_of)."""
    from vlmqc.evaluation.scoring import chance
    from vlmqc.metrics import chance_of

    test = [
        {"id": f"p{i}", "task": "pair", "verdict": "pass", "defects": [], "target": "", "answer": ""} for i in range(4)
    ] + [
        {
            "id": f"d{i}",
            "task": "pair",
            "verdict": "defective",
            "defects": [{"position": p, "type": "missing"}],
            "target": "",
            "answer": "",
        }
        for i, p in enumerate(["C5", "U1", "D9", "C2"])
    ]
    answers = {"pair": {"verdict": "defective", "position": "C5", "type": "missing"}}
    levels = chance(test, answers)
    assert levels["prior"]["eval/exact_match"] == 0.125
    assert levels["level"]["eval/exact_match"] == {"value": 0.5, "kind": "constant"}
    assert chance_of(levels, "eval/exact_match") == (0.5, "constant")
    assert levels["level"]["eval/escape_rate"] == {"value": 0.0, "kind": "prior"}  # "defective" to all escapes none
    assert "eval/loss" not in levels["level"]
