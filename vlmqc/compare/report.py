"""The report: run folders read, each section worked out, the page and its figures written."""

from __future__ import annotations

import time
from pathlib import Path

from vlmqc.compare.figures import curves_png, data_uri
from vlmqc.compare.load import latest, load_trial, read_history, read_prediction_rows, read_samples
from vlmqc.compare.notes import Notes
from vlmqc.compare.page import render
from vlmqc.compare.sections import choose_metric, confusion_section, samples_section, sweep_figures, trials_table
from vlmqc.compare.settings import label_trials, swept_and_fixed
from vlmqc.files import write_atomic


def build(run_dirs: list[Path], out_dir: Path, wanted_metric: str, sources: list[str]) -> Path:
    notes = Notes()
    trials = [load_trial(d, notes) for d in run_dirs]
    history = {t.dir: read_history(t.dir, notes) for t in trials}
    samples, predictions = {}, {}
    for t in trials:
        if found := latest(t.dir / "samples"):
            samples[t.dir] = (found[0], read_samples(t.dir, found[1], notes))
        if found := latest(t.dir / "predictions"):
            predictions[t.dir] = (found[0], found[1], read_prediction_rows(found[1], notes))
    metric, metrics = choose_metric(trials, wanted_metric, notes)
    swept, fixed = swept_and_fixed(trials)
    label_trials(trials, swept)
    table = trials_table(trials, swept, fixed, metrics, metric)
    trials = table["ranked"]  # every section in the first table's order: the best first

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = curves_png(trials, history)
    if curves:
        write_atomic(out_dir / "curves.png", curves)
    labels = {d: {p.id: p.example() for p in rows} for d, (_, _, rows) in predictions.items()}
    sections = {
        "table": table,
        "curves": data_uri(curves) if curves else None,
        "figures": sweep_figures(trials, swept, metric, out_dir),
        "samples": samples_section(trials, samples, labels, notes),
        "confusion": confusion_section(trials, predictions),
    }
    notes.close()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    text = render(
        title="vlmqc trial comparison",
        trials=trials,
        counts=sorted(counts.items()),
        metric=metric,
        sources=sources,
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
        notes=notes.lines,
        **sections,
    )
    report = out_dir / "report.html"
    write_atomic(report, text.encode("utf-8", "replace"))
    return report
