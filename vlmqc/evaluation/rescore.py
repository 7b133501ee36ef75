"""Score a finished run again with today's parser and metrics, from the answers it stored.

    vlmqc rescore outputs/runs/data=pair_round,prompt=short     # one run folder
    vlmqc rescore outputs/multirun/2026-11-25_10-00-00           # every trial of a sweep

Every stored answer (``predictions/step-*.jsonl``) is parsed again with the current
``vlmqc.prompts.parse_answer`` and the run's own prompt config (``config.prompt`` in its
summary.json), and scored with the current ``vlmqc.evaluate.score``. Then, each file written
atomically: the prediction rows, the evaluation rows of ``metrics.jsonl``, and the summary's
final / baseline / best / chance, with ``rescored: {parser_version, schema_version, time}``.
It prints old -> new for every metric of the final evaluation, and the answers the current parser
reads differently (how many per evaluation, the first few quoted). Version-1 folders (written before
records had a schema version) are read too, and written back as the current version.

Chance levels need the prior-only answers: a version-2 summary keeps them; for a version-1 one
they are learned again from the train split at ``facts.dataset_path`` when that is still there,
or, for synthetic data, from the labels its config deals (no image drawn); otherwise left out
(said so). The summary's ``diagnosis`` (a flat loss with answers at chance) is worked out again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from vlmqc.answers import PARSER_VERSION
from vlmqc.config import PromptConfig, to_object
from vlmqc.evaluation import choice
from vlmqc.evaluation.scoring import chance, prior_answers, score
from vlmqc.files import write_atomic, write_json
from vlmqc.metrics import DEFAULT_METRIC, METRICS
from vlmqc.runs.records import SCHEMA_VERSION, PredictionRow, read_predictions, read_summary
from vlmqc.runs.standing import diagnose, evaluations, standing
from vlmqc.runs.tracking import STEP
from vlmqc.runs.writer import Records
from vlmqc.tasks import parse


def run_folders(path: Path) -> list[Path]:
    """The run folder itself, or every run folder of a multirun folder."""
    if (path / "summary.json").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/summary.json"))


def _train_answers(dataset_path: str | None) -> dict | None:
    """The prior-only answers learned from the run's cached train split, if it is still there."""
    if not dataset_path or not (Path(dataset_path) / "train" / "state.json").is_file():
        return None
    from vlmqc.data import store

    train = store.load(Path(dataset_path))["train"]
    return prior_answers(
        list(
            train.select_columns(
                [c for c in ("task", "verdict", "defects", "target", "answer") if c in train.column_names]
            )
        )
    )


def _planned_answers(data: dict | None) -> dict | None:
    """The prior-only answers of a synthetic dataset, from its config alone: the generator deals
    every label before drawing a pixel (``synth.plan``), so no image is rendered."""
    from vlmqc.config import DATA_SCHEMAS, SynthConfig
    from vlmqc.data import synth

    schema = DATA_SCHEMAS.get((data or {}).get("task"))
    if schema is None or not issubclass(schema, SynthConfig):
        return None
    cfg = to_object(OmegaConf.merge(OmegaConf.structured(schema), data), "data")
    task = cfg.task.value
    return prior_answers(
        [
            {
                "task": task,
                "verdict": s.get("verdict", ""),
                "defects": s.get("defects", []),
                "target": s.get("target", ""),
                "answer": "",
            }
            for s in synth.plan(cfg, "train")
        ]
    )


def rescore(run_dir: Path) -> tuple[list[str], bool]:
    """Rescore one run folder in place; returns what it did, one line each, and whether every
    part of it was rescored (an unreadable summary or prediction file, chance levels that could
    not be worked out again, leave a part as it was)."""
    summary, problems = read_summary(run_dir / "summary.json")
    if summary is None or not summary.config.get("prompt"):
        return [f"{run_dir}: no summary with a prompt config; not rescored", *problems], False
    prompt = to_object(OmegaConf.merge(OmegaConf.structured(PromptConfig), summary.config["prompt"]), "prompt")
    lines = [
        f"{run_dir}: schema version {summary.schema_version}, parser version "
        f"{summary.facts.get('parser_version', 'unrecorded')} -> {PARSER_VERSION}",
        *problems,
    ]

    complete = not problems
    scores: dict[int, dict] = {}
    test: list[dict] = []
    for path in sorted((run_dir / "predictions").glob("step-*.jsonl")):
        rows, bad = read_predictions(path)
        if bad:  # scoring the readable rows alone would give other denominators: the step keeps its old values
            lines += [*bad, f"{path}: {len(bad)} problem(s); this evaluation is not rescored"]
            complete = False
            continue
        step = int(path.stem.split("-")[1])
        parsed = [parse(prompt, r.prediction, r.example()) for r in rows]
        lines += _read_differently(step, rows, parsed)
        test = [r.example() for r in rows]
        scores[step] = {f"eval/{k}": v for k, v in score(test, parsed).items()}
        write_atomic(
            path,
            "".join(
                json.dumps(PredictionRow.of(r.example(), r.prediction, p).to_dict(), sort_keys=True) + "\n"
                for r, p in zip(rows, parsed, strict=True)
            ).encode(),
        )
        if entries := choice.answers_file(test, parsed):  # MMAD's own answers file, read again alike
            write_json(path.with_name(f"step-{step:06d}.mmad.json"), entries)

    # the evaluation rows of metrics.jsonl: scored metrics replaced, everything else (loss, train rows, unreadable
    # lines) kept as it was
    def scored(name: str) -> bool:  # every metric the scorer gives (per-type and per-source ones too)
        return name in METRICS and name != "eval/loss"

    metrics_path, out, kept = run_dir / "metrics.jsonl", [], []
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(row, dict) and row.get(STEP) in scores and any(map(scored, row)):
            row = {k: v for k, v in row.items() if not scored(k)} | scores[row[STEP]]
        out.append(json.dumps(row))
        if isinstance(row, dict) and isinstance(row.get(STEP), int):
            kept.append(row)
    write_atomic(metrics_path, "".join(line + "\n" for line in out).encode())

    metric = summary.best_metric or summary.config.get("sweep_metric") or DEFAULT_METRIC
    fields = standing(evaluations(kept), metric)
    answers = (
        (summary.chance or {}).get("answer")
        or _train_answers(summary.facts.get("dataset_path"))
        or _planned_answers(summary.config.get("data"))
    )
    if answers and test:
        fields["chance"] = chance(test, answers)
    else:
        complete = False
        lines.append(
            f"{run_dir}: chance levels left as they were: no prior-only answers stored, the train split is gone "
            f"and the data is not synthetic"
        )
    fields["diagnosis"] = diagnose(kept, fields["final"], fields.get("chance") or summary.chance, metric, len(test))
    if (d := fields["diagnosis"] or {}).get("plateau"):
        lines.append(
            f"  plateau: the training loss is flat while {metric} is at chance ({d['chance']:.3f}, {d['kind']})"
        )
    old, new = summary.final or {}, fields["final"] or {}
    changed = [name for name in sorted(set(old) | set(new)) if name != "step" and old.get(name) != new.get(name)]
    for name in changed:  # only what changed: an unchanged metric is noise in a sweep's forty lines
        lines.append(f"  final {name}: {old.get(name)} -> {new.get(name)}")
    if not changed:
        lines.append(f"  final metrics unchanged ({len([n for n in new if n != 'step'])})")
    if (summary.best or {}).get("step") != (fields["best"] or {}).get("step"):
        lines.append(
            f"  best {metric}: step {(summary.best or {}).get('step')} -> {(fields['best'] or {}).get('step')}"
        )
    records = Records(run_dir)
    records.update(
        **fields,
        schema_version=SCHEMA_VERSION,
        facts={**summary.facts, "parser_version": PARSER_VERSION},
        rescored={
            "parser_version": PARSER_VERSION,
            "schema_version": SCHEMA_VERSION,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return lines, complete


SHOWN = 3  # answers read differently, quoted per evaluation


def _read_differently(step: int, rows: list[PredictionRow], parsed: list) -> list[str]:
    """The answers the current parser reads differently from the one that scored them: how many,
    and the first few, old reading -> new."""
    changed = [
        (r, old, new)
        for r, new in zip(rows, parsed, strict=True)
        if (old := r.parsed_answer()) is None
        or (old.verdict, old.defects, old.target) != (new.verdict, new.defects, new.target)
    ]
    if not changed:
        return []

    def said(p) -> str:
        return "unread" if p is None or not p.ok else p.target or p.verdict + "".join(f" {d[0]}" for d in p.defects)

    return [f"  step {step}: {len(changed)} of {len(rows)} answers read differently"] + [
        f"    {r.id}: {r.prediction[:60]!r}: {said(old)} -> {said(new)}" for r, old, new in changed[:SHOWN]
    ]
