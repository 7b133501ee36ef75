"""Rescoring a stored run with today's parser and metrics, on a folder written by older code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import prompt_option

from vlmqc.answers import PARSER_VERSION, Parsed, parse_answer
from vlmqc.cli.rescore import main
from vlmqc.evaluation.scoring import score
from vlmqc.runs.records import SCHEMA_VERSION, read_summary

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_v1"


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def independent_scores(run_dir: Path) -> dict[int, dict]:
    """The fixture's answers parsed and scored here, from the raw JSON, without the records module."""
    prompt = prompt_option("long")  # the fixture's run used prompt=long, the default
    out = {}
    for path in sorted((run_dir / "predictions").glob("step-*.jsonl")):
        rows = lines(path)
        examples = [{k: r.get(k, "") for k in ("id", "task", "verdict", "defects", "target", "answer")} for r in rows]
        out[int(path.stem[5:])] = {
            f"eval/{k}": v
            for k, v in score(examples, [parse_answer(prompt, r["prediction"], r["task"]) for r in rows]).items()
        }
    return out


@pytest.fixture
def old_run(tmp_path):
    run_dir = tmp_path / "multirun" / "trial-0"
    shutil.copytree(FIXTURE, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "schema_version" not in summary, "the fixture is a version-1 folder"
    summary["facts"]["dataset_path"] = str(tmp_path / "gone")  # its train split is not here
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_rescoring_a_version_1_folder_reproduces_its_answers_under_the_current_definitions(old_run, capsys):
    expected = independent_scores(FIXTURE)
    old_final = json.loads((FIXTURE / "summary.json").read_text())["final"]
    assert main([str(old_run.parent)]) == 0  # a multirun folder: its trials are found
    printed = capsys.readouterr().out
    assert f"eval/escape_rate: {old_final['eval/escape_rate']} -> {expected[4]['eval/escape_rate']}" in printed
    unchanged = [k for k, v in expected[4].items() if old_final.get(k) == pytest.approx(v)]
    assert unchanged and not [k for k in unchanged if f"final {k}:" in printed]  # only what changed is printed

    evals = {r["trainer/global_step"]: r for r in lines(old_run / "metrics.jsonl") if "eval/exact_match" in r}
    assert set(evals) == set(expected) == {0, 2, 4}
    for step, scores in expected.items():
        assert {k: evals[step][k] for k in scores} == pytest.approx(scores)
        assert scores["eval/defect_recall"] + scores["eval/escape_rate"] == pytest.approx(1.0)
    # under the old definition unreadable answers on defective rows escaped nothing; now they escape
    assert old_final["eval/escape_rate"] == 0.0 and expected[4]["eval/escape_rate"] == 1.0

    summary, problems = read_summary(old_run / "summary.json")
    assert problems == []
    assert summary.schema_version == SCHEMA_VERSION and summary.rescored["parser_version"] == PARSER_VERSION
    assert summary.final == pytest.approx({**expected[4], "eval/loss": old_final["eval/loss"], "step": 4})
    assert summary.baseline["step"] == 0 and summary.baseline["eval/verdict_accuracy"] == pytest.approx(
        expected[0]["eval/verdict_accuracy"]
    )
    # exact_match ties at steps 2 and 4; step 0 is the baseline, never best: the earliest other step wins
    assert expected[0]["eval/exact_match"] == expected[2]["eval/exact_match"] == expected[4]["eval/exact_match"]
    assert summary.best["step"] == 2 and summary.best_metric == "eval/exact_match"
    # the fixture's train split is gone, but its labels are dealt by the config alone (synth.plan):
    # the chance levels come back. Its 24 test pairs are 12 passed and 12 defective (the design is
    # exact at defect_rate 0.5), so answering "pass" to all is right on half, "defective" to all
    # flags every defect
    assert "chance levels left as they were" not in printed
    assert summary.chance["constant"]["eval/verdict_accuracy"] == pytest.approx(0.5)
    assert summary.chance["constant"]["eval/exact_match"] == pytest.approx(0.5)
    assert (
        summary.chance["constant"]["eval/defect_recall"] == 1.0
        and summary.chance["constant"]["eval/escape_rate"] == 0.0
    )
    assert summary.diagnosis is not None and summary.diagnosis["metric"] == "eval/exact_match"

    rows = lines(old_run / "predictions" / "step-000004.jsonl")
    assert len(rows) == 24 and all(r["answer"] == "" for r in rows)  # written back as version-2 rows
    untouched = [r for r in lines(old_run / "metrics.jsonl") if "train/loss" in r]
    assert untouched == [r for r in lines(FIXTURE / "metrics.jsonl") if "train/loss" in r]


def test_rescoring_uses_the_current_parser(old_run, monkeypatch):
    """A parser change shows in the rescored rows: here a parser that reads every answer as pass."""
    monkeypatch.setattr(
        "vlmqc.tasks.parse_answer", lambda cfg, text, task, types=(): Parsed(verdict="pass", ok=True, text=text)
    )
    assert main([str(old_run)]) == 0
    rows = lines(old_run / "predictions" / "step-000004.jsonl")
    assert all(r["parsed"] == {"verdict": "pass", "defects": [], "target": None, "ok": True} for r in rows)
    final = read_summary(old_run / "summary.json")[0].final
    passed = sum(r["verdict"] == "pass" for r in rows) / len(rows)
    assert (
        final["eval/unparseable_rate"] == 0.0
        and final["eval/verdict_accuracy"] == pytest.approx(passed)
        and final["eval/escape_rate"] == 1.0
    )


def test_a_bad_prediction_line_leaves_that_evaluation_as_it_was(old_run, capsys):
    path = old_run / "predictions" / "step-000002.jsonl"
    path.write_text(path.read_text() + '{"id": 3, "task": "pair"}\n')
    before = [r for r in lines(old_run / "metrics.jsonl") if r["trainer/global_step"] == 2 and "eval/escape_rate" in r]
    assert main([str(old_run)]) == 1  # a part was not rescored: the command says so in its status
    out, err = capsys.readouterr()
    assert "step-000002.jsonl:25: id: expected str" in out and "could not be rescored" in err
    assert [
        r for r in lines(old_run / "metrics.jsonl") if r["trainer/global_step"] == 2 and "eval/escape_rate" in r
    ] == before


def test_a_damaged_run_exits_1(old_run, capsys):
    (old_run / "summary.json").write_text("{ not json")
    assert main([str(old_run)]) == 1
    out, err = capsys.readouterr()
    assert "not rescored" in out and "could not be rescored" in err


def test_rescoring_shows_the_answers_the_current_parser_reads_differently(old_run, capsys):
    """An answer the version-1 parser read as pass (two products garbled together) is unparseable now."""
    path = old_run / "predictions" / "step-000004.jsonl"
    rows = lines(path)
    rows[0] |= {
        "prediction": "The bottom productthe top product passed",
        "parsed": {"verdict": "pass", "defects": [], "target": None, "ok": True},
    }
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(old_run)]) == 0
    out = capsys.readouterr().out
    assert "step 4: 1 of 24 answers read differently" in out
    assert "test-00000: 'The bottom productthe top product passed': pass -> unread" in out
    assert lines(path)[0]["parsed"]["ok"] is False
