"""A trial on each of the field's layouts, as a user runs it: the small trees and files of
tests/layouts.py, the tiny model, two steps, the real train command in a subprocess. MMAD's trial
also logs to W&B (offline) and writes its answers in MMAD's own format, which the benchmark's
rules (tests/evaluation/test_choice_scoring.py) score to the same table as the summary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import layouts
import pytest
from conftest import run_app
from mmad_rules import benchmark_table

QUICK = [
    "trainer.max_steps=2",
    "trainer.batch_size=2",
    "trainer.eval_batch_size=4",
    "trainer.logging_steps=1",
    "trainer.samples=2",
    "trainer.max_new_tokens=24",
]


def trial(tmp_path: Path, *args: str) -> dict:
    run = tmp_path / "run"
    done = run_app(tmp_path, "vlmqc.train", *QUICK, *args, f"hydra.run.dir={run}", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2
    return summary


@pytest.mark.slow  # three trials of two steps in real processes
@pytest.mark.parametrize("kind", ["mvtec", "visa", "conversations"])
def test_a_trial_completes_on_each_layout_with_the_inspection_metrics(tmp_path, kind):
    data = tmp_path / "data"
    path = {
        "mvtec": lambda: layouts.mvtec_category(data),
        "visa": lambda: layouts.visa_tree(data),
        "conversations": lambda: layouts.conversation_file(data),
    }[kind]()
    summary = trial(tmp_path, f"data={kind}", f"data.path={path}", "logger=none")
    final = summary["final"]
    assert summary["config"]["data"]["name"] == kind
    # the examples' answers are inspection verdicts: the verdict metrics are scored
    for name in ("eval/exact_match", "eval/verdict_accuracy", "eval/unparseable_rate"):
        assert 0.0 <= final[name] <= 1.0, name
    rows = (tmp_path / "run" / "predictions" / "step-000002.jsonl").read_text().splitlines()
    assert rows and all(json.loads(r)["target"] is not None or json.loads(r)["verdict"] for r in rows)


@pytest.mark.slow  # a trial of two steps in a real process, W&B offline
def test_an_mmad_trial_scores_its_table_in_the_summary_wandb_and_mmads_own_answers_file(tmp_path):
    root = layouts.mmad_root(tmp_path / "mmad")
    summary = trial(tmp_path, "data=mmad", f"data.path={root}")
    final = summary["final"]
    assert final["eval/mmad_average"] is not None and "eval/type/anomaly_detection" in final
    assert {"eval/source/mvtec_ad", "eval/source/visa", "eval/overkill", "eval/miss"} <= set(final)
    # the answers in MMAD's format, scored by the benchmark's rules, give the summary's table
    entries = json.loads((tmp_path / "run" / "predictions" / "step-000002.mmad.json").read_text())
    predictions = (tmp_path / "run" / "predictions" / "step-000002.jsonl").read_text().splitlines()
    assert len(entries) == len(predictions)  # one question an example (data.mmad_turn=question)
    assert {e["question_type"] for e in entries} >= {"Anomaly Detection", "Object Classification"}
    table = benchmark_table(entries)
    assert final["eval/mmad_average"] == pytest.approx(table["Average"]["Average"])
    assert final["eval/type/anomaly_detection"] == pytest.approx(table["Average"]["Anomaly Detection"])
    assert final["eval/source/visa"] == pytest.approx(table["VisA"]["Average"])
    # W&B recorded the same, read back with its own tool
    (wandb_run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", "--summary", str(wandb_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    recorded = json.loads(out)["summary"]
    for name in ("eval/mmad_average", "eval/type/anomaly_detection", "eval/source/mvtec_ad"):
        assert recorded[name] == pytest.approx(final[name]), name
