"""The report's pictures: loss curves, each swept setting against the metric, sample thumbnails."""

from __future__ import annotations

import base64
import io
import math
import textwrap
from pathlib import Path

from vlmqc.compare.load import LOSSES, TrialRow
from vlmqc.compare.settings import sort_key

THUMB_WIDTH = 160
NOT_FINISHED = ("failed", "interrupted", "unreadable")


def _figure(**kwargs):
    # Figure without pyplot: no global state, and PNGs are drawn by the Agg canvas whatever backend is configured
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def _style(i: int) -> dict:
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}


def curves_png(trials: list[TrialRow], history: dict[Path, list[tuple[int, dict[str, float]]]]) -> bytes | None:
    """Train and eval loss against the step, every trial overlaid; a failed trial ends in an x."""
    titles = dict(zip(LOSSES, ("train loss", "eval loss"), strict=True))
    if not any(losses for t in trials for _, losses in history.get(t.dir, [])):
        return None
    # long names wrap, and the figure grows to keep its legend (two columns) whole
    labels = {
        t.dir: textwrap.fill(
            t.label + (f" ({t.status})" if t.status in NOT_FINISHED else ""), 70, subsequent_indent="  "
        )
        for t in trials
    }
    fig = _figure(figsize=(11, 4.3 + 0.16 * math.ceil(sum(v.count("\n") + 1 for v in labels.values()) / 2)))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, LOSSES, strict=True):
        for i, t in enumerate(trials):
            points = [(step, losses[key]) for step, losses in history.get(t.dir, []) if key in losses]
            finite = [(s, v) for s, v in points if math.isfinite(v)]
            if not finite:
                continue
            ax.plot(*zip(*finite, strict=True), marker="o", markersize=3, label=labels[t.dir], **_style(i))
            if len(finite) < len(points):
                ax.plot(*finite[-1], marker="x", markersize=10, mew=2, color=_style(i)["color"])
        ax.set(title=titles[key], xlabel="step", ylabel="loss")
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
    categories = sorted({v for _, v, _ in points}, key=sort_key)
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
    """A JPEG data URI of the image, THUMB_WIDTH wide; None when it cannot be read as an image."""
    from PIL import Image

    if not path.is_file():  # a folder, or a pipe that would block the report
        return None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 8))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except (
        OSError,
        ValueError,
        Image.DecompressionBombError,
    ):  # not an image, a folder, or one too large to open safely
        return None
    return data_uri(buf.getvalue(), "jpeg")
