"""Compare trials: one self-contained HTML page from the run folders' own records, offline.

    python -m vlmqc.compare outputs/multirun/2026-11-25_10-00-00          # -> that folder's report/report.html
    python -m vlmqc.compare outputs/runs/data=pair_round outputs/runs/data=pair_square --out cmp
    python -m vlmqc.compare outputs/multirun/2026-11-25_10-00-00 --metric eval/defect_recall

An argument is a run folder (it holds ``summary.json``) or a folder of run folders (a multirun).
The page (``DIR/report.html``, default DIR ``<first argument>/report`` for a multirun, else
``./report``) shows: a sortable table of the trials (overrides, status, final and best ``eval/``
metrics, runtime); the train and eval loss curves overlaid; each swept override against the
chosen metric; the fixed inference samples side by side; a defect-type confusion matrix per
trial; the failed trials with their reasons. Its figures are written beside it as PNG files and
embedded in it, so the one HTML file can be mailed or archived alone.
Exit status 2 when an argument is not a folder or holds no run folder.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from vlmqc.evaluate import confusion
from vlmqc.labels import DefectType, describe
from vlmqc.prompts import Parsed
from vlmqc.track import STEP, write_atomic

DEFAULT_METRIC = "eval/exact_match"
THUMB_WIDTH = 160
NOT_FINISHED = ("failed", "interrupted", "unreadable")
_STEP_FILE = re.compile(r"step-(\d+)\.jsonl$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass
class Trial:
    dir: Path
    summary: dict  # empty when summary.json could not be read
    status: str
    reason: str | None
    overrides: dict[str, str]  # the command line's, as typed: key -> value
    label: str = ""  # short and unique among the compared trials: legends and column heads

    @property
    def name(self) -> str:
        return self.summary.get("run_name") or self.dir.name

    @property
    def dataset(self) -> str:
        return (self.summary.get("facts") or {}).get("dataset_hash") or "unknown"

    def metric(self, kind: str, name: str) -> float | None:
        return _number((self.summary.get(kind) or {}).get(name))


# --- Reading the run folders ---------------------------------------------------------------------


def _number(v) -> float | None:
    """A metric as a float; non-finite values are written as strings ("nan") by vlmqc.track."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _split_overrides(text: str) -> list[str]:
    """``a=1,b=[x,y]`` -> ``["a=1", "b=[x,y]"]``: Hydra's override dirname, commas in brackets kept."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if "=" in p]


def _parse_overrides(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        out[key.lstrip("+~")] = value
    return out


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The rows of a JSON-lines file, and how many lines could not be read (a run killed mid-write)."""
    rows, bad = [], 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def latest(folder: Path) -> tuple[int, Path] | None:
    """The last evaluation's file in ``samples/`` or ``predictions/``: (step, path)."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.jsonl") if (m := _STEP_FILE.search(p.name))]
    return max(found) if found else None


def load_trial(run_dir: Path) -> Trial:
    summary, status, reason = {}, "unknown", None
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"a JSON {type(summary).__name__}, not an object")
        status, reason = summary.get("status") or "unknown", summary.get("reason")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        summary, status, reason = {}, "unreadable", f"summary.json: {e}"
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = _parse_overrides(OmegaConf.load(overrides_file))
    except Exception:  # noqa: BLE001 - missing or broken: the run name holds the same overrides
        overrides = _parse_overrides(_split_overrides(summary.get("run_name") or ""))
    return Trial(run_dir, summary, status, reason, overrides)


def find_runs(arg: Path) -> list[Path]:
    """The run folder itself, or the run folders directly inside a multirun folder."""
    if (arg / "summary.json").exists():
        return [arg]
    return sorted(d for d in arg.iterdir() if d.is_dir() and (d / "summary.json").exists())


def config_value(trial: Trial, key: str) -> str | None:
    """A dotted key's value in the trial's resolved config: a group's option name, or the scalar."""
    node = trial.summary.get("config")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return str(node["name"]) if "name" in node else None
    return node if isinstance(node, str) else json.dumps(node)


def override_value(trial: Trial, key: str) -> tuple[str | None, bool]:
    """(value, typed on the command line?): a trial that left a key alone shows its config's value."""
    if key in trial.overrides:
        return trial.overrides[key], True
    return config_value(trial, key), False


def settings(trials: list[Trial], key: str) -> set:
    """The distinct values of a key among the trials that know it (1e-3 and 0.001 are one)."""
    values = (override_value(t, key)[0] for t in trials)
    return {n if (n := _number(v)) is not None else v for v in values if v is not None}


def _sort_key(value: str):
    n = _number(value)
    return (0, n, "") if n is not None else (1, 0.0, str(value))


def _rename_clashes(trials: list[Trial], rename) -> None:
    clashes: dict[str, list[Trial]] = {}
    for t in trials:
        clashes.setdefault(t.label, []).append(t)
    for same in clashes.values():
        if len(same) > 1:
            for i, t in enumerate(same, 1):
                t.label = rename(t, i)


def label_trials(trials: list[Trial], swept: list[str]) -> None:
    """Name each trial by the swept settings it typed; where two names clash, add the folder's
    name (a multirun's folder names are whole run names, so they are cut short), then a number."""
    for t in trials:
        t.label = ", ".join(f"{k}={t.overrides[k]}" for k in swept if k in t.overrides) or t.dir.name
    _rename_clashes(trials, lambda t, i: f"{t.label} [{t.dir.name if len(t.dir.name) <= 24 else t.dir.name[:23] + '…'}]")
    _rename_clashes(trials, lambda t, i: f"{t.label} #{i}")


# --- Figures -------------------------------------------------------------------------------------


def _figure(**kwargs):
    # Figure without pyplot: no global state, and PNGs are drawn by the Agg canvas whatever backend is configured
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _style(i: int) -> dict:
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}


def curves_png(trials: list[Trial], history: dict[Path, list[dict]]) -> bytes | None:
    """Train and eval loss against the step, every trial overlaid; a failed trial ends in an x."""
    kinds = (("train/loss", "train loss"), ("eval/loss", "eval loss"))
    if not any(k in row for t in trials for row in history.get(t.dir, []) for k, _ in kinds):
        return None
    # long names wrap, and the figure grows to keep its legend (two columns) whole
    labels = {t.dir: textwrap.fill(t.label + (f" ({t.status})" if t.status in NOT_FINISHED else ""), 70, subsequent_indent="  ") for t in trials}
    fig = _figure(figsize=(11, 4.3 + 0.16 * math.ceil(sum(v.count("\n") + 1 for v in labels.values()) / 2)))
    axes = fig.subplots(1, 2)
    for ax, (key, title) in zip(axes, kinds, strict=True):
        for i, t in enumerate(trials):
            points = [(row[STEP], _number(row[key])) for row in history.get(t.dir, []) if key in row and STEP in row]
            finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
            if not finite:
                continue
            ax.plot(*zip(*finite, strict=True), marker="o", markersize=3, label=labels[t.dir], **_style(i))
            if len(finite) < len(points):
                ax.plot(*finite[-1], marker="x", markersize=10, mew=2, color=_style(i)["color"])
        ax.set(title=title, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    for h, name in zip(*axes[1].get_legend_handles_labels(), strict=True):
        if name not in names:
            handles.append(h)
            names.append(name)
    fig.legend(handles, names, loc="outside lower center", fontsize=8, ncols=2)
    return _png(fig)


def param_png(key: str, points: list[tuple[int, str, float]], metric: str) -> bytes:
    """One swept setting (categorical x) against the metric; each point one trial, in its curve's colour."""
    categories = sorted({v for _, v, _ in points}, key=_sort_key)
    fig = _figure(figsize=(4.2, 3.2))
    ax = fig.subplots()
    for c, category in enumerate(categories):
        here = [(i, y) for i, v, y in points if v == category]
        for j, (i, y) in enumerate(here):
            offset = (j - (len(here) - 1) / 2) * min(0.08, 0.5 / len(here))  # trials with one value side by side
            ax.plot(c + offset, y, "o", markersize=7, color=_style(i)["color"])
    ax.set_xticks(range(len(categories)), [str(c) for c in categories], rotation=30 if len(categories) > 4 else 0)
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set(title=key, xlabel=key, ylabel=metric)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def thumbnail(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 8))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# --- HTML ----------------------------------------------------------------------------------------


def _visible(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 256 else "\ufffd"  # a lone surrogate cannot be written as UTF-8


def e(value) -> str:
    """Text content, escaped; control characters shown as \\xNN (models emit NULs and ESCs)."""
    text = html.escape("" if value is None else str(value), quote=True)
    return _CONTROL.sub(lambda m: f'<span class="ctl">{_visible(m.group())}</span>', text)


def a(value) -> str:
    """An attribute value, escaped (for double quotes); control characters as \\xNN, no markup."""
    return _CONTROL.sub(lambda m: _visible(m.group()), html.escape("" if value is None else str(value), quote=True))


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def _runtime(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _cell(text: str, value=None, cls: str = "") -> str:
    """A table cell; data-value is what the column sorts on (a number where there is one, empty when missing)."""
    if isinstance(value, float):
        value = repr(value) if math.isfinite(value) else ""
    data = "" if value is None else a(value)
    return f'<td data-value="{data}" class="{cls}">{text}</td>'


def _status_html(t: Trial) -> str:
    parts = [f'<span class="badge {a(t.status)}">{e(t.status)}</span>']
    if t.reason:
        parts.append(f'<div class="reason">{e(t.reason)}</div>')
    if t.summary.get("traceback"):
        tail = "\n".join(str(t.summary["traceback"]).rstrip().splitlines()[-8:])
        parts.append(f"<details><summary>traceback</summary><pre>{e(tail)}</pre></details>")
    return "".join(parts)


def trials_table(trials: list[Trial], swept: list[str], fixed: list[str], metrics: list[str], chosen: str) -> str:
    """Swept settings and results first, where the eye starts; settings common to all trials last."""

    def override_cells(t: Trial, keys: list[str]) -> list[str]:
        cells = []
        for k in keys:
            value, typed = override_value(t, k)
            shown = e(value) if value is not None else "—"
            cells.append(_cell(shown if typed else f'<span class="muted" title="not overridden: the config\'s value">{shown}</span>', value))
        return cells

    head = ['<th title="click to sort">trial</th>']
    head += [f'<th class="swept" title="override, differs between trials">{e(k)}</th>' for k in swept]
    head.append("<th>status</th>")
    for kind in ("final", "best"):
        head += [f'<th class="metric{" chosen" if m == chosen else ""}">{kind}<br>{e(m.removeprefix("eval/"))}</th>' for m in metrics]
    head.append("<th>runtime</th>")
    head += [f'<th class="fixed" title="override, the same in every trial">{e(k)}</th>' for k in fixed]
    rows = []
    for t in trials:
        cells = [_cell(f'<b>{e(t.label)}</b><div class="runname">{e(t.name)}</div>', t.label)]
        cells += override_cells(t, swept)
        cells.append(_cell(_status_html(t), t.status, "status"))
        for kind in ("final", "best"):
            for m in metrics:
                v = t.metric(kind, m)
                cells.append(_cell(_fmt(v), v, "num chosen" if m == chosen else "num"))
        runtime = _number(t.summary.get("runtime_seconds"))
        cells.append(_cell(_runtime(runtime), runtime, "num"))
        cells += override_cells(t, fixed)
        rows.append(f'<tr class="row-{a(t.status)}" data-dir="{a(t.dir)}">{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table id="trials" class="sortable">'
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def failed_section(trials: list[Trial]) -> str:
    bad = [t for t in trials if t.status != "completed"]
    if not bad:
        return "<p>Every trial completed.</p>"
    items = []
    for t in bad:
        step = t.summary.get("step")
        items.append(
            f'<li class="row-{a(t.status)}"><b>{e(t.label)}</b> — {_status_html(t)}'
            f'<div class="muted">{e(t.dir)}{f" · step {e(step)}" if step is not None else ""} · ran {_runtime(_number(t.summary.get("runtime_seconds")))}</div></li>'
        )
    return f'<ul class="failed">{"".join(items)}</ul>'


def _image(data_uri: str, alt: str, cls: str = "") -> str:
    return f'<img src="{data_uri}" alt="{a(alt)}" class="{cls}">'


def by_dataset(trials: list[Trial]) -> dict[str, list[Trial]]:
    """Trials by dataset hash (the same test ids mean the same images only within one); unknown last."""
    groups: dict[str, list[Trial]] = {}
    for t in sorted(trials, key=lambda t: t.dataset == "unknown"):
        groups.setdefault(t.dataset, []).append(t)
    return groups


def dataset_heading(members: list[Trial]) -> str:
    if members[0].dataset == "unknown":
        return '<h3>dataset unknown <span class="muted">(no dataset hash in summary.json)</span></h3>'
    return f'<h3>dataset {e(config_value(members[0], "data") or "?")} <span class="muted">(hash {e(members[0].dataset)})</span></h3>'


def samples_section(trials: list[Trial], samples: dict[Path, tuple[int, list[dict]]], labels_by_id: dict[Path, dict[str, dict]]) -> str:
    """Per dataset: one row per fixed sample id, each trial's answer in a column, right in green."""
    groups = by_dataset([t for t in trials if t.dir in samples])
    if not groups:
        return "<p>No trial recorded inference samples.</p>"
    out = []
    for members in groups.values():
        ids: list[str] = []
        for t in members:
            fixed = (t.summary.get("facts") or {}).get("sample_ids") or []
            for i in [*fixed, *(r.get("id") for r in samples[t.dir][1])]:
                if i is not None and i not in ids:
                    ids.append(i)
        by_id = {t.dir: {r.get("id"): r for r in samples[t.dir][1]} for t in members}
        head = "".join(f'<th>{e(t.label)}<div class="muted">step {samples[t.dir][0]}{f" · {e(t.status)}" if t.status != "completed" else ""}</div></th>' for t in members)
        rows = []
        for sid in ids:
            image = labels = None
            truths = []
            for t in members:
                row = by_id[t.dir].get(sid)
                if row is not None:
                    truths.append(row.get("truth"))
                    if image is None and row.get("image"):
                        image = thumbnail(t.dir / row["image"])
                labels = labels or labels_by_id.get(t.dir, {}).get(sid)
            same_truth = len(set(truths)) == 1
            truth = f"<b>{e(describe(labels))}</b>" if labels else ""
            if same_truth and truths:
                truth += f'<pre class="truth">{e(truths[0])}</pre>'
            cells = [f'<td class="id">{e(sid)}</td>', f"<td>{_image(image, sid, 'thumb') if image else '<span class=muted>no image</span>'}</td>", f"<td>{truth}</td>"]
            for t in members:
                row = by_id[t.dir].get(sid)
                if row is None:
                    cells.append('<td class="muted">not sampled</td>')
                    continue
                ok = row.get("correct")
                cls, mark = ("right", "✓") if ok is True else ("wrong", "✗") if ok is False else ("", "?")
                expected = "" if same_truth else f'<div class="muted">expected: {e(row.get("truth"))}</div>'
                cells.append(f'<td class="pred {cls}" data-trial="{a(t.label)}"><span class="mark">{mark}</span> <pre>{e(row.get("prediction"))}</pre>{expected}</td>')
            rows.append(f'<tr data-id="{a(sid)}">{"".join(cells)}</tr>')
        out.append(
            f'{dataset_heading(members)}<div class="scroll"><table class="samples">'
            f"<thead><tr><th>id</th><th>image</th><th>truth</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )
    return "".join(out)


_CONFUSION_ORDER = ["pass", *(d.value for d in DefectType), "defective", "untyped", "elsewhere", "unparseable"]


def _confusion_key(label: str):
    return (_CONFUSION_ORDER.index(label), "") if label in _CONFUSION_ORDER else (len(_CONFUSION_ORDER), label)


def confusion_counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """vlmqc.evaluate.confusion over a predictions file, its parsed answers rebuilt."""
    parsed = []
    for r in rows:
        p = r.get("parsed") or {}
        parsed.append(Parsed(verdict=p.get("verdict"), defects=tuple(tuple(d) for d in p.get("defects") or []), target=p.get("target"), ok=bool(p.get("ok")), text=r.get("prediction") or ""))
    return confusion(rows, parsed)


def confusion_section(trials: list[Trial], predictions: dict[Path, tuple[int, list[dict]]]) -> str:
    """A matrix per trial; columns shared within a dataset, so the trials' matrices line up."""
    out = []
    for members in by_dataset(trials).values():
        counts, notes = {}, []
        for t in members:
            if t.dir not in predictions:
                notes.append(f"<li><b>{e(t.label)}</b>: no predictions recorded.</li>")
                continue
            step, rows = predictions[t.dir]
            try:
                c = confusion_counts(rows)
            except (KeyError, TypeError, ValueError) as err:
                notes.append(f"<li><b>{e(t.label)}</b>: predictions/step-{step:06d}.jsonl could not be scored ({e(err)}).</li>")
                continue
            if c:
                counts[t.dir] = (step, c)
            elif rows and all(r.get("task") == "star" for r in rows):
                notes.append(f"<li><b>{e(t.label)}</b>: star task — the answer is a position, so there is no defect-type confusion matrix.</li>")
            else:
                notes.append(f"<li><b>{e(t.label)}</b>: no pass / defective rows to count.</li>")
        true_labels = sorted({r for _, c in counts.values() for r in c}, key=_confusion_key)
        columns = sorted({col for _, c in counts.values() for row in c.values() for col in row} | {"pass", "elsewhere", "unparseable"} | set(true_labels) - {"defective"}, key=_confusion_key)
        tables = []
        for t in members:
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
                    share = n / total if total else 0.0
                    colour = "40,160,70" if col == true else "210,60,50"
                    style = f' style="background: rgba({colour},{0.12 + 0.75 * share:.2f})"' if n else ' class="zero"'
                    cells.append(f'<td data-true="{a(true)}" data-pred="{a(col)}"{style}>{n}</td>')
                body.append(f'<tr><th>{e(true)}</th>{"".join(cells)}<td class="total">{total}</td></tr>')
            caption = f'{e(t.label)}<div class="muted">step {step}{f" · {e(t.status)}" if t.status != "completed" else ""}</div>'
            head = "".join(f"<th>{e(col)}</th>" for col in columns)
            tables.append(
                f'<table class="confusion" data-trial="{a(t.label)}"><caption>{caption}</caption>'
                f'<thead><tr><th class="corner">true ↓ / said →</th>{head}<th>rows</th></tr></thead><tbody>{"".join(body)}</tbody></table>'
            )
        out.append(
            f"{dataset_heading(members)}"
            f'<div class="matrices">{"".join(tables)}</div>{f"<ul>{chr(10).join(notes)}</ul>" if notes else ""}'
        )
    return "".join(out)


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
.muted { color: #777; font-size: 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 4px 6px; vertical-align: top; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
table.sortable thead th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable thead th[aria-sort=ascending]::after { content: " ▲"; }
table.sortable thead th[aria-sort=descending]::after { content: " ▼"; }
th.fixed { color: #888; font-weight: normal; }
th.swept { background: #e3ecfa; }
.chosen { background: #fff3c4 !important; font-weight: bold; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.runname { color: #888; font-size: 11px; max-width: 28em; word-break: break-all; }
tr.row-failed td, li.row-failed { background: #fdecea; }
tr.row-interrupted td, li.row-interrupted, tr.row-running td { background: #fff4e0; }
tr.row-unreadable td, li.row-unreadable { background: #eee; }
tr.row-failed td:first-child { border-left: 4px solid #c62828; }
tr.row-interrupted td:first-child { border-left: 4px solid #ef6c00; }
tr.row-unreadable td:first-child { border-left: 4px solid #555; }
.badge { padding: 1px 6px; border-radius: 8px; font-size: 12px; color: #fff; background: #777; }
.badge.completed { background: #2e7d32; } .badge.failed { background: #c62828; }
.badge.interrupted, .badge.running { background: #ef6c00; } .badge.unreadable { background: #555; }
.reason { font-size: 12px; max-width: 24em; }
ul.failed li { padding: 6px; margin: 4px 0; list-style: none; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 12px; }
table.samples td.pred { max-width: 260px; }
td.right { background: #e6f4ea; border-left: 4px solid #2e7d32; }
td.wrong { background: #fdecea; border-left: 4px solid #c62828; }
td.right .mark { color: #2e7d32; font-weight: bold; } td.wrong .mark { color: #c62828; font-weight: bold; }
pre.truth { color: #555; margin-top: 4px; max-width: 260px; }
.ctl { color: #a0a; font-size: 10px; }
img.thumb { width: 160px; display: block; }
.matrices { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
table.confusion td { text-align: right; min-width: 2.2em; }
table.confusion caption { font-weight: bold; text-align: left; max-width: 40em; }
table.confusion td.total, table.confusion td.zero { color: #bbb; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; max-width: 420px; }
"""

# Click a header to sort; again to reverse. Numbers sort as numbers; missing values stay last either way.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir);
      var sign = dir === "ascending" ? 1 : -1;
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-value") || "", y = b.cells[col].getAttribute("data-value") || "";
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        if (!isNaN(nx) && !isNaN(ny)) { return sign * (nx - ny); }
        return sign * x.localeCompare(y, undefined, {numeric: true});
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def page(title: str, sections: list[tuple[str, str, str]], intro: str) -> str:
    nav = " · ".join(f'<a href="#{sid}">{e(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{e(name)}</h2>{content}</section>' for sid, name, content in sections)
    # the policy makes the page's promise checkable: nothing is fetched from anywhere
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}"><link rel="icon" href="data:,">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><h1>{e(title)}</h1>{intro}<nav>{nav}</nav>{body}"
        f"<script>{SORT_JS}</script></body></html>\n"
    )


# --- The report ----------------------------------------------------------------------------------


def _file_name(key: str) -> str:
    return "param-" + re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".png"


@dataclass
class Records:
    """What the report reads besides summary.json, by run folder; steps are the last evaluation's."""

    history: dict[Path, list[dict]]  # metrics.jsonl
    samples: dict[Path, tuple[int, list[dict]]]  # (step, samples/step-N.jsonl)
    predictions: dict[Path, tuple[int, list[dict]]]  # (step, predictions/step-N.jsonl)
    notes: list[str]  # lines that could not be read


def read_records(trials: list[Trial]) -> Records:
    records = Records({}, {}, {}, [])
    for t in trials:
        rows, bad = read_jsonl(t.dir / "metrics.jsonl")
        records.history[t.dir] = rows
        if bad:
            records.notes.append(f"{t.dir / 'metrics.jsonl'}: {bad} line(s) could not be read.")
        for store, folder in ((records.samples, "samples"), (records.predictions, "predictions")):
            found = latest(t.dir / folder)
            if found:
                rows, bad = read_jsonl(found[1])
                store[t.dir] = (found[0], rows)
                if bad:
                    records.notes.append(f"{found[1]}: {bad} line(s) could not be read.")
    return records


def choose_metric(trials: list[Trial], wanted: str, notes: list[str]) -> tuple[str, list[str]]:
    """The metric to highlight (``exact_match`` means ``eval/exact_match``), and every eval metric, it first."""
    metrics: list[str] = []
    for t in trials:
        for kind in ("final", "best"):
            metrics += [m for m in (t.summary.get(kind) or {}) if m.startswith("eval/") and m not in metrics]
    if wanted not in metrics and f"eval/{wanted}" in metrics:
        wanted = f"eval/{wanted}"
    if wanted not in metrics and metrics:
        notes.append(f"No trial has {wanted}; the report uses {metrics[0]}.")
        wanted = metrics[0]
    return wanted, sorted(metrics, key=lambda m: (m != wanted, m))


def sweep_figures(trials: list[Trial], swept: list[str], metric: str, out_dir: Path) -> str:
    """One plot per swept key; trials without a final value of the metric (failed ones) are named, not plotted."""
    index = {t.dir: i for i, t in enumerate(trials)}
    figures = []
    for key in swept:
        points, left_out = [], []
        for t in trials:
            y = t.metric("final", metric)
            if t.status != "completed" or y is None or not math.isfinite(y):
                left_out.append(f"{e(t.label)} ({e(t.status if t.status != 'completed' else 'no ' + metric)})")
            else:
                points.append((index[t.dir], str(override_value(t, key)[0]), y))
        caption = f"{e(key)} against final {e(metric)}." + (f" Left out: {', '.join(left_out)}." if left_out else "")
        if not points:
            figures.append(f"<figure><figcaption>{caption} No trial left to plot.</figcaption></figure>")
            continue
        png = param_png(key, points, metric)
        write_atomic(out_dir / _file_name(key), png)
        figures.append(f'<figure>{_image(_data_uri(png), f"{key} against {metric}")}<figcaption>{e(_file_name(key))}: {caption}</figcaption></figure>')
    return f'<div class="figures">{"".join(figures)}</div>' if figures else "<p>No override differs between the trials.</p>"


def build(run_dirs: list[Path], out_dir: Path, wanted_metric: str, sources: list[str]) -> Path:
    trials = [load_trial(d) for d in run_dirs]
    records = read_records(trials)
    notes = records.notes
    metric, metrics = choose_metric(trials, wanted_metric, notes)

    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.overrides if k not in keys]
    # config groups (data, prompt, lora) before single fields: they say most about a trial
    swept = sorted((k for k in keys if len(settings(trials, k)) > 1), key=lambda k: "." in k)
    fixed = [k for k in keys if k not in swept]
    label_trials(trials, swept)

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = curves_png(trials, records.history)
    if curves:
        write_atomic(out_dir / "curves.png", curves)
        curves_html = f'<figure>{_image(_data_uri(curves), "train and eval loss curves")}<figcaption>curves.png — x marks a non-finite loss.</figcaption></figure>'
    else:
        curves_html = "<p>No trial logged a loss.</p>"

    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    intro = (
        f'<p>{len(trials)} trial(s): {", ".join(f"{n} {e(s)}" for s, n in sorted(counts.items()))}. '
        f'Chosen metric: <b>{e(metric)}</b>. Sources: {", ".join(f"<code>{e(s)}</code>" for s in sources)}. '
        f'Written {e(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>'
        + (f'<ul class="notes">{"".join(f"<li>{e(n)}</li>" for n in notes)}</ul>' if notes else "")
    )
    labels_by_id = {d: {r.get("id"): r for r in rows} for d, (_, rows) in records.predictions.items()}
    sections = [
        ("trials", "Trials", trials_table(trials, swept, fixed, metrics, metric) + '<p class="muted">Click a column head to sort. Greyed values were not overridden (the config\'s).</p>'),
        ("failed", "Failed, interrupted and unreadable trials", failed_section(trials)),
        ("curves", "Loss curves", curves_html),
        ("sweep", f"Swept settings against {metric}", sweep_figures(trials, swept, metric, out_dir)),
        ("samples", "Inference samples", samples_section(trials, records.samples, labels_by_id)),
        ("confusion", "Defect-type confusion (last evaluation)", confusion_section(trials, records.predictions)),
    ]
    report = out_dir / "report.html"
    write_atomic(report, page("vlmqc trial comparison", sections, intro).encode("utf-8", "replace"))
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
            parser.error(f"{path}: not a folder")
        found = find_runs(path)
        if not found:
            parser.error(f"{path}: holds no run (no summary.json in it or in its subfolders)")
        run_dirs += [d for d in found if d.resolve() not in {r.resolve() for r in run_dirs}]
    first = args.paths[0]
    out = args.out or (first / "report" if not (first / "summary.json").exists() else Path("report"))
    report = build(run_dirs, out, args.metric, [str(p) for p in args.paths])
    print(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
