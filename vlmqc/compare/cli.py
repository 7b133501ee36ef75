"""``python -m vlmqc.compare``: arguments to run folders, run folders to the page."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmqc.compare.figures import curves_png, data_uri
from vlmqc.compare.load import find_runs, latest, load_trial, read_history, read_prediction_rows, read_samples
from vlmqc.compare.notes import Notes
from vlmqc.compare.page import render
from vlmqc.compare.sections import choose_metric, confusion_section, samples_section, sweep_figures, trials_table
from vlmqc.compare.settings import label_trials, swept_and_fixed
from vlmqc.records import DEFAULT_METRIC
from vlmqc.track import write_atomic


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

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = curves_png(trials, history)
    if curves:
        write_atomic(out_dir / "curves.png", curves)
    labels = {d: {p.id: p.example() for p in rows} for d, (_, _, rows) in predictions.items()}
    sections = {
        "table": trials_table(trials, swept, fixed, metrics, metric),
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
        title="vlmqc trial comparison", trials=trials, counts=sorted(counts.items()), metric=metric, sources=sources,
        written=time.strftime("%Y-%m-%d %H:%M:%S"), notes=notes.lines, **sections,
    )
    report = out_dir / "report.html"
    write_atomic(report, text.encode("utf-8", "replace"))
    return report


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m vlmqc.compare", description="Compare trials in one self-contained HTML report.")
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or multirun folders that hold them")
    parser.add_argument("--out", type=Path, help="report folder (default: <first argument>/report for a multirun, else ./report)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"the metric to highlight and plot the sweeps against (default {DEFAULT_METRIC})")
    args = parser.parse_args(argv)
    run_dirs: list[Path] = []
    for path in args.paths:
        if not path.is_dir():
            parser.error(f"{path}: not a folder")  # exit status 2
        found = find_runs(path)
        if not found:
            parser.error(f"{path}: holds no run (no summary.json in it or in its subfolders)")
        run_dirs += [d for d in found if d.resolve() not in {r.resolve() for r in run_dirs}]
    first = args.paths[0]
    out = args.out or (first / "report" if not (first / "summary.json").exists() else Path("report"))
    report = build(run_dirs, out, args.metric, [str(p) for p in args.paths])
    print(report)
    return report
