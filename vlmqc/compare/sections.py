"""What each section of the page shows, worked out from the trials; the template lays it out."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from vlmqc.compare.figures import data_uri, param_png, thumbnail
from vlmqc.compare.load import Shown, TrialRow
from vlmqc.compare.notes import Notes
from vlmqc.compare.settings import config_value, override_value
from vlmqc.evaluation.scoring import confusion
from vlmqc.files import write_atomic
from vlmqc.labels import describe
from vlmqc.metrics import CONFUSION_ORDER, METRICS
from vlmqc.runs.records import PredictionRow, problem


def choose_metric(trials: list[TrialRow], wanted: str, notes: Notes) -> tuple[str, list[str]]:
    """The metric to highlight (``exact_match`` means ``eval/exact_match``), and every eval metric, it first."""
    metrics: list[str] = []
    for t in trials:
        for m in (*t.final, *t.best):
            if m.startswith("eval/") and m not in metrics:
                metrics.append(m)
    if wanted not in metrics and f"eval/{wanted}" in metrics:
        wanted = f"eval/{wanted}"
    if wanted not in metrics and metrics:
        notes.add(f"No trial has {wanted}; the report uses {metrics[0]}.")
        wanted = metrics[0]
    return wanted, sorted(metrics, key=lambda m: (m != wanted, m))


@dataclass
class MetricCell:
    value: float | None
    chance: float | None  # the trial's dataset's chance level (final column only)
    chance_kind: str | None  # the guesser that scores it (prior, uniform, constant)
    ceiling: float | None  # the pixel-difference detector's score on the trial's test rows (final column only)
    step: int | None  # the best value's step (best column only)
    below_chance: bool


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def standings(trial: TrialRow) -> list[str]:
    """Each metric of the trial's diagnosis against its own chance level, named: what the plateau
    badge explains ("exact_match 0.500 at chance (0.500, constant)")."""
    out = []
    for m, d in ((trial.diagnosis or {}).get("metrics") or {}).items():
        if isinstance(d, dict) and all(isinstance(d.get(k), (int, float)) for k in ("value", "chance")):
            where = "at" if d.get("at_chance") else "above"
            out.append(
                f"{m.removeprefix('eval/')} {d['value']:.3f} {where} chance ({d['chance']:.3f}, {d.get('kind')})"
            )
    return out


def trials_table(trials: list[TrialRow], swept: list[str], fixed: list[str], metrics: list[str], chosen: str) -> dict:
    """The first screen answers "which trial is best, and by how much": the trials ranked by the
    chosen metric's final value, one column each for that value, its lead over the next (or gap to
    the best), the best value and its step, chance and ceiling; the swept settings beside them.
    The other metrics, the baseline and the fixed settings follow in collapsible groups, rows in
    the same order."""
    higher = METRICS[chosen].higher_is_better if chosen in METRICS else True
    finals = {t.dir: v for t in trials if _finite(v := t.final.get(chosen))}
    ranked = sorted(
        trials,
        key=lambda t: (t.dir not in finals, -finals[t.dir] if t.dir in finals and higher else finals.get(t.dir, 0.0)),
    )
    leader = ranked[0] if ranked and ranked[0].dir in finals else None
    runner_up = ranked[1] if len(ranked) > 1 and ranked[1].dir in finals else None
    rows = []
    for t in ranked:
        value = finals.get(t.dir)
        if t is leader:
            gap = abs(value - finals[runner_up.dir]) if runner_up else None
            gap_text = f"best, by {gap:.3f} over {runner_up.label}" if runner_up else "best (the only one scored)"
        elif value is not None:
            gap = -abs(value - finals[leader.dir])
            gap_text = f"{-gap:.3f} behind"
        else:
            gap, gap_text = None, "—"
        rows.append(
            {
                "trial": t,
                "is_best": t is leader,
                "final": t.final.get(chosen),
                "gap": gap,
                "gap_text": gap_text,
                "best": t.best.get(chosen),
                "best_step": t.best_step if chosen in t.best else None,
                "chance": t.chance.get(chosen),
                "chance_kind": t.chance_kind.get(chosen),
                "ceiling": t.ceiling.get(chosen),
                "swept": [override_value(t, k) for k in swept],
                "fixed": [override_value(t, k) for k in fixed],
                "below_chance": t.below_chance(chosen),
                "standings": standings(t),
            }
        )
    others = [m for m in metrics if m != chosen]
    groups = []
    for kind, shown in (("final", others), ("best", others), ("baseline", metrics)):
        if not shown or not any(getattr(t, kind) for t in trials):
            continue
        cells = {
            t.dir: [
                MetricCell(
                    t.metric(kind, m),
                    t.chance.get(m) if kind == "final" else None,
                    t.chance_kind.get(m) if kind == "final" else None,
                    t.ceiling.get(m) if kind == "final" else None,
                    t.best_step if kind == "best" and m in t.best else None,
                    kind == "final" and t.below_chance(m),
                )
                for m in shown
            ]
            for t in ranked
        }
        groups.append({"kind": kind, "metrics": shown, "cells": cells})
    return {"chosen": chosen, "swept": swept, "fixed": fixed, "rows": rows, "groups": groups, "ranked": ranked}


def _file_name(key: str) -> str:
    return "param-" + re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".png"


def sweep_figures(trials: list[TrialRow], swept: list[str], metric: str, out_dir: Path) -> list[dict]:
    """One plot per swept key, written beside the page; trials without a final value of the metric (failed ones) are
    named, not plotted."""
    figures = []
    for key in swept:
        points, left_out = [], []
        for i, t in enumerate(trials):
            y = t.metric("final", metric)
            if t.status != "completed" or y is None or not math.isfinite(y):
                left_out.append(f"{t.label} ({t.status if t.status != 'completed' else 'no ' + metric})")
            else:
                points.append((i, str(override_value(t, key)[0]), y))
        figure = {"key": key, "file": _file_name(key), "left_out": left_out, "uri": None}
        if points:
            png = param_png(key, points, metric)
            write_atomic(out_dir / figure["file"], png)
            figure["uri"] = data_uri(png)
        figures.append(figure)
    return figures


def by_dataset(trials: list[TrialRow]) -> list[dict]:
    """Trials by dataset hash (the same test ids mean the same images only within one); unknown last."""
    groups: dict[str, list[TrialRow]] = {}
    for t in sorted(trials, key=lambda t: t.dataset == "unknown"):
        groups.setdefault(t.dataset, []).append(t)
    return [
        {"hash": h if h != "unknown" else None, "name": config_value(members[0], "data") or "?", "members": members}
        for h, members in groups.items()
    ]


def samples_section(
    trials: list[TrialRow],
    samples: dict[Path, tuple[int, list[Shown]]],
    labels: dict[Path, dict[str, dict]],
    notes: Notes,
) -> list[dict]:
    """Per dataset: one row per fixed sample id, each trial's answer in a column, right in green."""
    out = []
    for group in by_dataset([t for t in trials if t.dir in samples]):
        members = group["members"]
        # the fixed ids first, in their order, then any a trial sampled besides them
        ids = list(
            dict.fromkeys(i for t in members for i in [*t.sample_ids, *(s.record.id for s in samples[t.dir][1])])
        )
        by_id = {t.dir: {s.record.id: s for s in samples[t.dir][1]} for t in members}
        rows = []
        for sid in ids:
            here = [by_id[t.dir].get(sid) for t in members]
            found = [s for s in here if s is not None]
            image = None
            for s in found:
                if s.image is not None and image is None:
                    image = thumbnail(s.image)
                    if image is None:
                        path, line = s.source
                        notes.extend(
                            path,
                            [
                                problem(
                                    f"{path}:{line}", "image", f"{s.image} could not be read as an image; not embedded"
                                )
                            ],
                        )
            truths = {s.record.truth for s in found}
            row_labels = next((labels[t.dir][sid] for t in members if sid in labels.get(t.dir, {})), None)
            rows.append(
                {
                    "id": sid,
                    "image": image,
                    "described": describe(row_labels) if row_labels else None,
                    "truth": found[0].record.truth if len(truths) == 1 and found else None,
                    "same_truth": len(truths) == 1,
                    "cells": [{"trial": t, "sample": s and s.record} for t, s in zip(members, here, strict=True)],
                }
            )
        out.append({**group, "steps": {t.dir: samples[t.dir][0] for t in members}, "rows": rows})
    return out


def _confusion_key(label: str):
    return (CONFUSION_ORDER.index(label), "") if label in CONFUSION_ORDER else (len(CONFUSION_ORDER), label)


def confusion_section(
    trials: list[TrialRow], predictions: dict[Path, tuple[int, Path, list[PredictionRow]]]
) -> list[dict]:
    """A matrix per trial; columns shared within a dataset, so the trials' matrices line up."""
    out = []
    for group in by_dataset(trials):
        counts, said = {}, []
        for t in group["members"]:
            if t.dir not in predictions:
                said.append((t, "no predictions recorded."))
                continue
            step, path, rows = predictions[t.dir]
            usable = [r for r in rows if r.parsed is not None]
            try:
                c = confusion([r.example() for r in usable], [r.parsed_answer() for r in usable])
            except ValueError as err:  # a row with no label to score against
                said.append((t, f"{path.name} could not be scored ({err})."))
                continue
            if len(usable) < len(rows):
                said.append(
                    (
                        t,
                        f"{len(rows) - len(usable)} row(s) of {path.name} not counted: their answer could not be "
                        f"read (see the notes above).",
                    )
                )
            if c:
                counts[t.dir] = (step, c)
            elif usable and all(r.task == "star" for r in usable):
                said.append((t, "star task — the answer is a position, so there is no defect-type confusion matrix."))
            else:
                said.append((t, "no pass / defective rows to count."))
        true_labels = sorted({r for _, c in counts.values() for r in c}, key=_confusion_key)
        columns = sorted(
            {col for _, c in counts.values() for row in c.values() for col in row}
            | {"pass", "elsewhere", "unparseable"}
            | set(true_labels) - {"defective"},
            key=_confusion_key,
        )
        tables = []
        for t in group["members"]:
            if t.dir not in counts:
                continue
            step, c = counts[t.dir]
            body = []
            for true in true_labels:
                row = c.get(true, {})
                total = sum(row.values())
                cells = []
                for col in columns:
                    n = row.get(col, 0)
                    colour = "40,160,70" if col == true else "210,60,50"
                    cells.append(
                        {
                            "pred": col,
                            "n": n,
                            "background": f"rgba({colour},{0.12 + 0.75 * n / total:.2f})" if n else None,
                        }
                    )
                body.append({"true": true, "cells": cells, "total": total})
            tables.append({"trial": t, "step": step, "rows": body})
        out.append({**group, "columns": columns, "tables": tables, "said": said})
    return out
