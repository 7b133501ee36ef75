"""What a person checks about a dataset: its counts, a contact sheet, a pixel-difference baseline."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

from vlmqc.config import DiffImageConfig, PairConfig
from vlmqc.data import board, diff, synth
from vlmqc.files import write_atomic
from vlmqc.labels import POSITIONS, describe

log = logging.getLogger(__name__)


def counts(ds: datasets.Dataset) -> dict[str, Counter]:
    """Examples per verdict, defect type, position (defect or star) and terminal shape."""
    cols = ds.select_columns(["verdict", "defects", "target", "shape"])
    out = {"verdict": Counter(), "defect": Counter(), "position": Counter(), "shape": Counter()}
    for ex in cols:
        if ex["verdict"]:
            out["verdict"][ex["verdict"]] += 1
        if ex["shape"]:
            out["shape"][ex["shape"]] += 1
        if ex["target"]:
            out["position"][ex["target"]] += 1
        for d in ex["defects"]:
            out["defect"][d["type"]] += 1
            out["position"][d["position"]] += 1
    return out


def format_counts(dsd: datasets.DatasetDict) -> str:
    per_split = {split: counts(ds) for split, ds in dsd.items()}
    lines = [
        "split   " + "".join(f"{s:>8}" for s in dsd) + "    (examples)",
        "        " + "".join(f"{len(ds):>8}" for ds in dsd.values()),
    ]
    for group in ("verdict", "defect", "shape", "position"):
        keys = sorted(
            set().union(*(c[group] for c in per_split.values())),
            key=lambda k: (POSITIONS.index(k) if k in POSITIONS else -1, k),
        )
        if not keys:
            continue
        lines.append(f"{group}:")
        for k in keys:
            lines.append(f"  {k:<18}" + "".join(f"{per_split[s][group][k]:>8}" for s in dsd))
    return "\n".join(lines)


def pick(ds: datasets.Dataset, n: int) -> list[int]:
    """Rows for a contact sheet: one of each defect type first, then the rest in order."""
    cols = ds.select_columns(["verdict", "defects"])
    chosen, seen = [], set()
    for i, ex in enumerate(cols):
        kinds = {d["type"] for d in ex["defects"]} or {ex["verdict"]}
        if kinds - seen:
            chosen.append(i)
            seen |= kinds
        if len(chosen) >= n:
            break
    chosen += [i for i in range(len(ds)) if i not in chosen][: n - len(chosen)]
    return sorted(chosen[:n])


def contact_sheet(ds: datasets.Dataset, rows: list[int], path: Path, tile_width: int = 448, columns: int = 3) -> Path:
    """A grid of examples, each captioned with its id and labels; written atomically."""
    f = board.font(15)
    tiles = []
    for i in rows:
        ex = ds[i]
        images = [im.convert("RGB") for im in (ex["source_image"], ex["image"]) if im is not None]
        width = tile_width // len(images)
        scaled = [im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR) for im in images]
        h = max(im.height for im in scaled)
        tile = Image.new("RGB", (tile_width, h + 44), (255, 255, 255))
        for k, im in enumerate(scaled):
            tile.paste(im, (k * width, 0))
        draw = ImageDraw.Draw(tile)
        draw.text((4, h + 4), ex["id"], fill=(90, 90, 90), font=f)
        draw.text(
            (4, h + 23), describe(ex), fill=(180, 20, 20) if ex["verdict"] == "defective" else (20, 20, 20), font=f
        )
        tiles.append(tile)
    cols = min(columns, len(tiles))
    cell_h = max(t.height for t in tiles)
    sheet = Image.new(
        "RGB", (cols * (tile_width + 8) + 8, ((len(tiles) + cols - 1) // cols) * (cell_h + 8) + 8), (235, 235, 235)
    )
    for k, t in enumerate(tiles):
        sheet.paste(t, (8 + (k % cols) * (tile_width + 8), 8 + (k // cols) * (cell_h + 8)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())  # the project's one atomic writer: two runs into one folder both succeed
    return path


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def pixel_baseline(ds: datasets.Dataset, cfg: PairConfig) -> dict:
    """How far the difference scores alone get, without learning (test split, pair or diff task).

    Verdict AUROC of the highest cell score, and how often the k highest-scoring cells are
    exactly the k labelled positions. A high baseline means the task is visible in the pixels.
    """
    geom = board.Geometry(cfg.render.width)
    gap = synth.pair_gap(cfg.render.width)
    scores_of = []
    for ex in ds:
        if ex["task"] == "diff":
            scores = np.array(json.loads(ex["meta"])["diff"]["scores"])
        else:
            pair = ex["image"].convert("RGB")
            ref = pair.crop((0, 0, geom.width, geom.height))
            cand = pair.crop((0, geom.height + gap, geom.width, 2 * geom.height + gap))
            scores = diff.concentrate(ref, cand, geom, DiffImageConfig()).scores
        scores_of.append((ex, scores))
    top = [float(s.max()) for ex, s in scores_of]
    defective = np.array([ex["verdict"] == "defective" for ex, _ in scores_of])
    located = []
    for ex, s in scores_of:
        if ex["verdict"] == "defective":
            k = len(ex["defects"])
            order = np.argsort(-s, axis=None, kind="stable")[:k]
            found = {POSITIONS[i] for i in order}
            located.append(found == {d["position"] for d in ex["defects"]})
    top = np.array(top)
    return {
        "verdict_auroc": round(_auroc(top[defective], top[~defective]), 4),
        "verdict_accuracy": round(_best_threshold_accuracy(top, defective), 4),
        "position_accuracy": round(float(np.mean(located)), 4) if located else float("nan"),
        "examples": len(scores_of),
    }


def _best_threshold_accuracy(score: np.ndarray, positive: np.ndarray) -> float:
    """Verdict accuracy of "defective when the highest cell score exceeds t", at the best t for
    these rows: an upper bound for this detector (the threshold is fitted on what it scores)."""
    if len(score) == 0:
        return float("nan")
    cuts = np.concatenate([[-np.inf], np.unique(score)])  # "> cut": the lowest cut calls everything defective
    return float(max(((score > c) == positive).mean() for c in cuts))


def pixel_ceiling(rows, cfg, data_path: Path | None = None) -> dict | None:
    """The pixel-difference detector's scores on a trial's test rows, beside which its metrics are
    read (summary.json's ``ceiling``, W&B's ``ceiling/...``): what no learning at all gets from
    the pixels, with two kindnesses a model does not get (the verdict threshold fitted on these
    rows, the number of defects given for the positions), so it is an upper bound for the
    detector. None where there is no pair to difference (star, custom data).

    With ``data_path`` (the cached dataset's folder) the scores are kept beside it, keyed by the
    rows' ids and this module's source, so the trials of a sweep over the same data compute them
    once (seconds for 300 raw pairs, minutes for a large test split); an unreadable file is
    computed again."""
    if not isinstance(cfg, PairConfig) or not rows:
        return None
    path = None
    if data_path is not None:
        h = hashlib.sha256(json.dumps([r["id"] for r in rows]).encode())
        h.update(Path(__file__).read_bytes())  # the detector's code: a changed detector is another ceiling
        path = Path(data_path).parent / f"{Path(data_path).name}-ceiling-{h.hexdigest()[:16]}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); computing the pixel ceiling again", path, e)
    b = pixel_baseline(rows, cfg)
    values = {
        "eval/verdict_accuracy": b["verdict_accuracy"],
        "eval/position_accuracy": b["position_accuracy"],
        "verdict_auroc": b["verdict_auroc"],
    }
    # a level that cannot be computed on these rows (no defective row: no position to find) is left out, as
    # evaluate.score does
    ceiling = {k: v for k, v in values.items() if v == v} | {"examples": b["examples"]}
    if path is not None:
        try:
            write_atomic(path, json.dumps(ceiling, indent=2).encode())
        except OSError as e:  # a read-only cache: the trial goes on, the next one computes it again
            log.warning("%s: not written (%s)", path, e)
    return ceiling
