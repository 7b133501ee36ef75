"""The concentrated-anomaly image: one picture in which only what differs stands out.

About 95 % of a reference/candidate pair is the same product; the defect is a few per cent of
the pixels. This module turns the two halves into one image that concentrates that difference,
from their pixels alone (never from the labels):

1. align: the board's pose in each half comes from the moments of its silhouette (centroid and
   principal axis), and the candidate is warped onto the reference;
2. match lighting: a per-channel fit ``cand ~ ref * (a + gx x + gy y) + b`` over the board
   absorbs brightness, contrast and illumination gradients;
3. difference: the absolute residual, smoothed to suppress sensor noise, minus its median floor;
4. score each cell (mean residual inside it) and draw the chosen view, coordinates kept.

The same scores give a pixel-difference baseline for the pair tasks (``baseline``): how well the
task is solved without any learning, a reference point for a model's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vlmqc.config import DiffImageConfig, DiffMode
from vlmqc.data import board
from vlmqc.labels import COLUMNS, ROWS, position

FRAME = (28, 28, 30)  # background of the derived image; coordinates are printed light on it
LIGHT = (240, 240, 240)


@dataclass
class Concentrated:
    image: Image.Image
    scores: np.ndarray  # (3, 9) mean smoothed residual per cell, 8-bit levels
    rotation: float  # degrees applied to the candidate to align it
    shift: tuple[float, float]  # pixels

    def ranked(self) -> list[str]:
        """Positions from most to least deviating."""
        order = np.argsort(-self.scores, axis=None, kind="stable")
        return [position(*np.unravel_index(i, self.scores.shape)) for i in order]

    def meta(self) -> dict:
        return {
            "rotation": round(self.rotation, 4),
            "shift": [round(v, 3) for v in self.shift],
            "scores": np.round(self.scores, 3).tolist(),
        }


def _gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def board_pose(img: Image.Image, geom: board.Geometry) -> tuple[float, float, float]:
    """Centroid (x, y) and principal-axis angle (radians, image coordinates) of the board.

    The board's silhouette is found inside its nominal box widened by a quarter cell (the
    printed coordinates lie outside that box); each row of the silhouette is filled between
    its first and last board pixel, so missing or pale terminals do not bias the moments.
    """
    g = _gray(img)
    pad = 0.25 * geom.cell
    x0, y0, x1, y1 = geom.board_box
    x0, y0 = max(0, int(x0 - pad)), max(0, int(y0 - pad))
    x1, y1 = min(g.shape[1], int(math.ceil(x1 + pad))), min(g.shape[0], int(math.ceil(y1 + pad)))
    sub = g[y0:y1, x0:x1]
    frame = np.concatenate([sub[:2].ravel(), sub[-2:].ravel(), sub[:, :2].ravel(), sub[:, -2:].ravel()])
    background, inside = np.median(frame[::2]), np.median(sub[::3, ::3])  # subsampled: same level, a tenth of the time
    mask = np.abs(sub - background) > 0.5 * abs(background - inside)
    mask = np.maximum.accumulate(mask, axis=1) & np.maximum.accumulate(mask[:, ::-1], axis=1)[:, ::-1]
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    dx, dy = xs - cx, ys - cy
    angle = 0.5 * math.atan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean())
    return cx + x0, cy + y0, angle


def align(reference: Image.Image, candidate: Image.Image, geom: board.Geometry) -> tuple[Image.Image, float, tuple[float, float]]:
    """The candidate warped so that its board lies where the reference's does."""
    rx, ry, ra = board_pose(reference, geom)
    cx, cy, ca = board_pose(candidate, geom)
    rotation = math.degrees(ca - ra)  # PIL rotates counter-clockwise on screen, i.e. by -angle in image coordinates
    shift = (rx - cx, ry - cy)
    warped = candidate.rotate(rotation, resample=Image.BILINEAR, center=(cx, cy), translate=shift, fillcolor=(0, 0, 0))
    return warped, rotation, shift


def _board_slice(geom: board.Geometry, inset: float) -> tuple[slice, slice]:
    x0, y0, x1, y1 = geom.board_box
    i = inset * geom.cell
    return slice(int(y0 + i), int(y1 - i)), slice(int(x0 + i), int(x1 - i))


def match_lighting(reference: np.ndarray, candidate: np.ndarray, margin: int) -> np.ndarray:
    """The reference relit to look like the candidate: per channel ``ref * (a + gx x + gy y) + b``.

    Fitted by least squares on every third pixel (``margin`` pixels in from the edges), twice:
    the second fit drops pixels the first could not explain (the defect itself), so a defect
    does not skew the lighting.
    """
    h, w = reference.shape[:2]
    xs = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    ys = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    rows, cols = slice(margin, h - margin, 3), slice(margin, w - margin, 3)
    sx, sy = np.broadcast_arrays(xs[:, cols], ys[rows, :])
    out = np.empty_like(reference)
    for ch in range(3):
        r = reference[rows, cols, ch]
        design = np.stack([r, r * sx, r * sy, np.ones_like(r)], axis=-1).reshape(-1, 4)
        target = candidate[rows, cols, ch].ravel()
        keep = np.ones(target.shape, dtype=bool)
        for _ in range(2):
            (a, gx, gy, b), *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
            resid = np.abs(design @ np.array([a, gx, gy, b], dtype=np.float32) - target)
            keep = resid < max(3.0 * 1.4826 * float(np.median(resid)), 1.0)
        out[..., ch] = reference[..., ch] * (a + gx * xs + gy * ys) + b
    return out


def residual(reference: Image.Image, aligned: Image.Image, geom: board.Geometry, smoothing: float) -> np.ndarray:
    """Smoothed |candidate - relit reference| (mean over channels) above its median floor.

    Only the board counts: outside it lie the printed coordinates and the warp's fill.
    """
    rows, cols = _board_slice(geom, 0.0)
    ref = np.asarray(reference, dtype=np.float32)[rows, cols]
    cand = np.asarray(aligned, dtype=np.float32)[rows, cols]
    d = np.abs(cand - match_lighting(ref, cand, margin=round(0.05 * geom.cell))).mean(axis=-1)
    if smoothing > 0:
        d = np.asarray(Image.fromarray(np.clip(d, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(smoothing)), dtype=np.float32)
    d -= np.median(d[::3, ::3])
    np.clip(d, 0, None, out=d)
    heat = np.zeros(reference.size[::-1], dtype=np.float32)
    heat[rows, cols] = d
    return heat


def cell_scores(heat: np.ndarray, geom: board.Geometry) -> np.ndarray:
    scores = np.zeros((len(ROWS), len(COLUMNS)), dtype=np.float32)
    for r in range(len(ROWS)):
        for c in range(len(COLUMNS)):
            x0, y0, x1, y1 = (int(round(v)) for v in geom.cell_box(r, c))
            scores[r, c] = heat[y0:y1, x0:x1].mean()
    return scores


def _hot(t: np.ndarray) -> np.ndarray:
    """Black - red - yellow - white, t in [0, 1]."""
    t = np.clip(t, 0, 1)[..., None]
    return np.concatenate([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1) * 255


def _view(mode: DiffMode, aligned: Image.Image, heat: np.ndarray, scores: np.ndarray, geom: board.Geometry, cfg: DiffImageConfig) -> Image.Image:
    if mode == DiffMode.heatmap:
        return Image.fromarray(_hot(heat / cfg.scale).astype(np.uint8))
    if mode == DiffMode.overlay:
        # the candidate in colour where it differs, a dim grey copy of it elsewhere; the lit area
        # is widened by a blur so that a defect is seen with the pixels around it
        alpha = Image.fromarray((np.clip(heat / (0.35 * cfg.scale), 0, 1) * 255).astype(np.uint8))
        alpha = alpha.filter(ImageFilter.GaussianBlur(3)).point(lambda v: min(255, int(v * 2.5)))
        dim = aligned.convert("L").point(lambda v: int(v * 0.3 + 20)).convert("RGB")
        return Image.composite(aligned, dim, alpha)
    out = np.zeros(heat.shape + (3,), dtype=np.float32)
    for r in range(len(ROWS)):
        for c in range(len(COLUMNS)):
            x0, y0, x1, y1 = (int(round(v)) for v in geom.cell_box(r, c))
            out[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = _hot(np.array(scores[r, c] / (0.15 * cfg.scale)))
    return Image.fromarray(out.astype(np.uint8))


def concentrate(reference: Image.Image, candidate: Image.Image, geom: board.Geometry, cfg: DiffImageConfig) -> Concentrated:
    aligned, rotation, shift = align(reference, candidate, geom)
    heat = residual(reference, aligned, geom, cfg.smoothing)
    scores = cell_scores(heat, geom)
    view = _view(DiffMode(cfg.mode), aligned, heat, scores, geom, cfg)
    out = Image.new("RGB", reference.size, FRAME)
    rows, cols = _board_slice(geom, 0.0)
    box = (cols.start, rows.start, cols.stop, rows.stop)
    out.paste(view.crop(box), box[:2])
    draw = ImageDraw.Draw(out)
    for r in range(len(ROWS) + 1):  # a faint grid, so each cell's extent can be read
        y = geom.cell_box(min(r, len(ROWS) - 1), 0)[1 if r < len(ROWS) else 3]
        draw.line((geom.grid_box[0], y, geom.grid_box[2], y), fill=(90, 90, 96))
    for c in range(len(COLUMNS) + 1):
        x = geom.cell_box(0, min(c, len(COLUMNS) - 1))[0 if c < len(COLUMNS) else 2]
        draw.line((x, geom.grid_box[1], x, geom.grid_box[3]), fill=(90, 90, 96))
    board.draw_coordinates(out, geom, colour=LIGHT)
    return Concentrated(out, scores, rotation, shift)
