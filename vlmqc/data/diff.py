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
    rotation: float  # degrees between the candidate's board and the reference's
    shift: tuple[float, float]  # pixels from the candidate's board centre to the reference's

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


def board_pose(g: np.ndarray, geom: board.Geometry) -> tuple[float, float, float]:
    """Centroid (x, y) and principal-axis angle (radians, image coordinates) of the board in a
    grey image.

    The board's silhouette is found inside its nominal box widened by a quarter cell (the
    printed coordinates lie outside that box); each row of the silhouette is filled between
    its first and last board pixel, so missing or pale terminals do not bias the moments.
    """
    pad = 0.25 * geom.cell
    x0, y0, x1, y1 = geom.board_box
    x0, y0 = max(0, int(x0 - pad)), max(0, int(y0 - pad))
    x1, y1 = min(g.shape[1], int(math.ceil(x1 + pad))), min(g.shape[0], int(math.ceil(y1 + pad)))
    sub = g[y0:y1, x0:x1]
    frame = np.concatenate([sub[:2].ravel(), sub[-2:].ravel(), sub[:, :2].ravel(), sub[:, -2:].ravel()])
    background, inside = np.median(frame[::2]), np.median(sub[::3, ::3])  # subsampled: same level, a tenth of the time
    mask = np.abs(sub - background) > 0.5 * abs(background - inside)
    # Each row of the silhouette spans [left, right]; the moments of those spans have closed
    # forms, so a few sums over rows replace sums over every board pixel.
    rows = np.nonzero(mask.any(axis=1))[0].astype(np.float64)
    left = np.argmax(mask[rows.astype(int)], axis=1).astype(np.float64)
    right = mask.shape[1] - 1 - np.argmax(mask[rows.astype(int), ::-1], axis=1).astype(np.float64)
    n = right - left + 1
    sx = n * (left + right) / 2
    sxx = (right * (right + 1) * (2 * right + 1) - (left - 1) * left * (2 * left - 1)) / 6
    total = n.sum()
    cx, cy = sx.sum() / total, (rows * n).sum() / total
    mxx = sxx.sum() / total - cx * cx
    myy = (rows * rows * n).sum() / total - cy * cy
    mxy = (rows * sx).sum() / total - cx * cy
    angle = 0.5 * math.atan2(2 * mxy, mxx - myy)
    return cx + x0, cy + y0, angle


def _affine(pc: np.ndarray, pr: np.ndarray, phi: float) -> tuple[float, ...]:
    """The map x_cand = pc + Rot(phi) (x_ref - pr), as Pillow's affine coefficients."""
    c, s = math.cos(phi), math.sin(phi)
    return (c, -s, pc[0] - (c * pr[0] - s * pr[1]), s, c, pc[1] - (s * pr[0] + c * pr[1]))


def _warp(candidate: Image.Image, pc: np.ndarray, pr: np.ndarray, phi: float) -> Image.Image:
    """The candidate resampled into the reference frame: x_cand = pc + Rot(phi) (x_ref - pr)."""
    data = _affine(pc, pr, phi)
    return candidate.transform(
        candidate.size, Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=0 if candidate.mode == "L" else (0, 0, 0)
    )


def _warp_samples(gray: np.ndarray, data: tuple[float, ...], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``_warp`` of a grey image read at the integer pixels (ys, xs) only, the same values.

    Written by hand because Pillow warps every pixel and the alignment reads one in four of the
    board's: this repeats Pillow's bilinear filter (Geometry.c: pixel centres, edge clamping,
    truncation to 8 bits, 0 outside) in the same double-precision steps, for a fifth of the time.
    """
    a0, a1, a2, a3, a4, a5 = data
    h, w = gray.shape
    xin, yin = xs + 0.5, ys + 0.5
    xo, yo = a0 * xin + a1 * yin + a2, a3 * xin + a4 * yin + a5
    inside = (xo >= 0.0) & (xo < w) & (yo >= 0.0) & (yo < h)
    xo, yo = xo - 0.5, yo - 0.5
    x, y = np.floor(xo), np.floor(yo)
    dx, dy = xo - x, yo - y
    x, y = x.astype(np.intp), y.astype(np.intp)
    x0, x1 = np.clip(x, 0, w - 1), np.clip(x + 1, 0, w - 1)
    flat = gray.ravel()

    def along(row: np.ndarray) -> np.ndarray:
        a = flat[row + x0].astype(np.float64)
        return a + (flat[row + x1] - a) * dx

    v1 = along(np.clip(y, 0, h - 1) * w)
    v2 = np.where(y + 1 < h, along(np.clip(y + 1, 0, h - 1) * w), v1)
    v = v1 + (v2 - v1) * dy
    return np.where(inside, np.trunc(v), 0.0).astype(np.float32)


def align(
    reference: Image.Image, candidate: Image.Image, geom: board.Geometry, refine: int = 2
) -> tuple[Image.Image, float, tuple[float, float]]:
    """The candidate warped so that its board lies where the reference's does.

    The silhouettes' moments give the pose to a fraction of a pixel; ``refine`` Gauss-Newton
    steps on the board's own texture (Lucas-Kanade for a shift and a small rotation) take the
    rest, so that terminal edges do not light up the difference of two identical products.
    """
    ref_gray = np.asarray(reference.convert("L"))
    cand_gray = np.asarray(candidate.convert("L"))
    rx, ry, ra = board_pose(ref_gray.astype(np.float32), geom)
    cx, cy, ca = board_pose(cand_gray.astype(np.float32), geom)
    pr, pc, phi = np.array([rx, ry]), np.array([cx, cy]), ca - ra
    if refine:
        rows, cols = _board_slice(geom, 0.1)
        rows, cols = (
            slice(rows.start, rows.stop, 2),
            slice(cols.start, cols.stop, 2),
        )  # every 4th pixel is plenty for 3 unknowns
        ref = ref_gray[rows, cols].astype(np.float32)
        ref = (ref - ref.mean()) / (ref.std() + 1e-6)
        iy, ix = np.gradient(ref)
        iy, ix = iy / 2, ix / 2  # gradients per pixel, not per sample
        grid_y, grid_x = np.mgrid[rows, cols]
        ys, xs = grid_y.astype(np.float32), grid_x.astype(np.float32)
        jac = np.stack([ix, iy, (xs - pr[0]) * iy - (ys - pr[1]) * ix], axis=-1).reshape(-1, 3)
        for _ in range(refine):
            cur = _warp_samples(cand_gray, _affine(pc, pr, phi), grid_y, grid_x)
            err = ((cur - cur.mean()) / (cur.std() + 1e-6) - ref).ravel()
            w = (np.abs(err) < 3 * 1.4826 * np.median(np.abs(err[::4])) + 1e-6).astype(
                np.float32
            )  # a defect is not misalignment
            wj = jac * w[:, None]
            dx, dy, theta = np.linalg.solve(wj.T @ jac, -(wj.T @ err))
            c, s = math.cos(phi), math.sin(phi)
            pc = pc + np.array([c * dx - s * dy, s * dx + c * dy])
            phi += theta
    warped = _warp(candidate, pc, pr, phi)
    return warped, math.degrees(phi), (float(pr[0] - pc[0]), float(pr[1] - pc[1]))


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
        keep = np.ones(target.shape, dtype=np.float32)
        for _ in range(2):
            weighted = design * keep[:, None]
            a, gx, gy, b = np.linalg.solve(weighted.T @ design, weighted.T @ target)  # normal equations: 4 unknowns
            resid = np.abs(design @ np.array([a, gx, gy, b], dtype=np.float32) - target)
            keep = (resid < max(3.0 * 1.4826 * float(np.median(resid[::4])), 1.0)).astype(np.float32)
        out[..., ch] = reference[..., ch] * (a + gx * xs + gy * ys) + b
    return out


def residual(reference: Image.Image, aligned: Image.Image, geom: board.Geometry, smoothing: float) -> np.ndarray:
    """Smoothed |candidate - relit reference| (mean over channels) above its median floor.

    Only the board's inside counts: outside it lie the printed coordinates and the warp's fill,
    and its edge would show every residual misalignment; the cells start a further 0.1 cell in.
    """
    rows, cols = _board_slice(geom, 0.1)
    box = (cols.start, rows.start, cols.stop, rows.stop)
    ref = np.asarray(reference.crop(box), dtype=np.float32)
    cand = np.asarray(aligned.crop(box), dtype=np.float32)
    d = np.abs(cand - match_lighting(ref, cand, margin=round(0.05 * geom.cell))).mean(axis=-1)
    if smoothing > 0:
        d = np.asarray(
            Image.fromarray(np.clip(d, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(smoothing)),
            dtype=np.float32,
        )
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


def _view(
    mode: DiffMode,
    aligned: Image.Image,
    heat: np.ndarray,
    scores: np.ndarray,
    geom: board.Geometry,
    cfg: DiffImageConfig,
) -> Image.Image:
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


def concentrate(
    reference: Image.Image, candidate: Image.Image, geom: board.Geometry, cfg: DiffImageConfig
) -> Concentrated:
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
