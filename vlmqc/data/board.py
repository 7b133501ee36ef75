"""Drawing a board: a 3 x 9 grid of terminals on a PCB, with coordinates printed around it.

Everything is drawn with PIL at ``scale`` times the output size and reduced afterwards, which
gives smooth edges and lets the nuisance step shift the board by fractions of a pixel.
A terminal, a defect or a mark never leaves its cell, so a defect changes exactly one cell.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmqc.labels import COLUMNS, ROWS, DefectType, Shape

# Layout in cell units (c = width / 10.6): a label column and a label row, the board with a
# 0.2 c border around the grid, and a thin margin. Coordinates sit on the background, outside
# the board, so that they stay legible and do not cover a terminal.
_LABEL_W, _LABEL_H, _BORDER, _MARGIN = 0.9, 0.8, 0.2, 0.3
_WIDTH_CELLS = _LABEL_W + 2 * _BORDER + len(COLUMNS) + _MARGIN
_HEIGHT_CELLS = _LABEL_H + 2 * _BORDER + len(ROWS) + _MARGIN
TERMINAL = 0.5  # terminal side (or diameter) in cells
PAD = 0.72  # solder pad under a terminal, in cells


@dataclass(frozen=True)
class Geometry:
    """Where things are on a board image of the given pixel width (at scale 1)."""

    width: int

    @property
    def cell(self) -> float:
        return self.width / _WIDTH_CELLS

    @property
    def height(self) -> int:
        return round(_HEIGHT_CELLS * self.cell)

    @property
    def board_box(self) -> tuple[float, float, float, float]:
        c = self.cell
        return (
            _LABEL_W * c,
            _LABEL_H * c,
            (_LABEL_W + 2 * _BORDER + len(COLUMNS)) * c,
            (_LABEL_H + 2 * _BORDER + len(ROWS)) * c,
        )

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        c = self.cell
        x0 = (_LABEL_W + _BORDER + col) * c
        y0 = (_LABEL_H + _BORDER + row) * c
        return (x0, y0, x0 + c, y0 + c)

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.cell_box(row, col)
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def grid_box(self) -> tuple[float, float, float, float]:
        x0, y0, _, _ = self.cell_box(0, 0)
        _, _, x1, y1 = self.cell_box(len(ROWS) - 1, len(COLUMNS) - 1)
        return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Look:
    """A product's colours; reference and candidate of a pair share one look."""

    background: tuple[int, int, int]
    board: tuple[int, int, int]
    pad: tuple[int, int, int]
    metal: tuple[int, int, int]


LOOKS = (
    Look(background=(208, 206, 200), board=(38, 96, 58), pad=(150, 112, 70), metal=(214, 178, 70)),  # green PCB, gold
    Look(
        background=(200, 204, 208), board=(36, 62, 112), pad=(140, 140, 150), metal=(196, 198, 204)
    ),  # blue PCB, silver
    Look(background=(214, 210, 204), board=(60, 60, 64), pad=(150, 112, 70), metal=(214, 178, 70)),  # black PCB, gold
    Look(
        background=(204, 208, 204), board=(30, 100, 90), pad=(140, 140, 150), metal=(196, 198, 204)
    ),  # teal PCB, silver
)
BURNT = (52, 34, 22)
STAR_RED = (222, 28, 28)


def _shade(rgb, f):
    return tuple(int(max(0, min(255, v * f))) for v in rgb)


def _mix(a, b, t):
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b, strict=True))


@functools.lru_cache(maxsize=16)
def font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font: the same glyphs on every machine with the same Pillow."""
    return ImageFont.load_default(size=px)


def new_canvas(geom: Geometry, look: Look, scale: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (geom.width * scale, geom.height * scale), look.background)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = (v * scale for v in geom.board_box)
    draw.rectangle((x0, y0, x1, y1), fill=look.board)
    return img, draw


def _box(cx, cy, w, h):
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def draw_pad(draw: ImageDraw.ImageDraw, cx: float, cy: float, c: float, shape: Shape, look: Look) -> None:
    box = _box(cx, cy, PAD * c, PAD * c)
    if shape == Shape.round:
        draw.ellipse(box, fill=look.pad)
    else:
        draw.rectangle(box, fill=look.pad)


def draw_terminal(
    draw, cx, cy, c, shape: Shape, colour, squash: tuple[float, float] = (1.0, 1.0), skew: float = 0.0
) -> None:
    """A small cube (or cylinder) seen from above: a shaded side, a lit top face, a highlight."""
    w, h = TERMINAL * c * squash[0], TERMINAL * c * squash[1]
    bevel = 0.14 * TERMINAL * c
    layers = (
        (0.0, 0.0, w, h, _shade(colour, 0.62)),  # sides
        (-bevel / 2, -bevel / 2, w - bevel, h - bevel, colour),  # top face
        (-w * 0.18, -h * 0.18, w * 0.28, h * 0.28, _mix(colour, (255, 255, 255), 0.45)),  # highlight
    )
    for dx, dy, lw, lh, fill in layers:
        x0, y0, x1, y1 = _box(cx + dx, cy + dy, lw, lh)
        if shape == Shape.round:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif skew:
            s = skew * lw
            draw.polygon([(x0 + s, y0), (x1 + s, y0), (x1 - s, y1), (x0 - s, y1)], fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)


def draw_cell(
    draw, geom: Geometry, scale: int, row: int, col: int, shape: Shape, look: Look, defect: dict | None
) -> None:
    """The pad and terminal of one cell, with at most one defect.

    ``defect`` holds the type and the parameters the generator drew for it (shift, particle, ...).
    """
    cx, cy = (v * scale for v in geom.cell_center(row, col))
    c = geom.cell * scale
    draw_pad(draw, cx, cy, c, shape, look)
    kind = DefectType(defect["type"]) if defect else None
    if kind == DefectType.missing:
        return
    if kind == DefectType.shifted:
        draw_terminal(draw, cx + defect["dx"] * c, cy + defect["dy"] * c, c, shape, look.metal)
    elif kind == DefectType.wrong_shape:
        other = Shape.round if shape == Shape.square else Shape.square
        draw_terminal(draw, cx, cy, c, other, look.metal)
    elif kind == DefectType.discoloured:
        draw_terminal(draw, cx, cy, c, shape, _mix(look.metal, BURNT, defect["burn"]))
    elif kind == DefectType.deformed:
        draw_terminal(draw, cx, cy, c, shape, look.metal, squash=tuple(defect["squash"]), skew=defect["skew"])
    else:
        draw_terminal(draw, cx, cy, c, shape, look.metal)
    if kind == DefectType.foreign_particle:
        px, py = cx + defect["x"] * c, cy + defect["y"] * c
        colour = tuple(defect["colour"])
        if defect["fibre"]:
            a, half = defect["angle"], 0.17 * c
            pts = [
                (px - half * math.cos(a), py - half * math.sin(a)),
                (px, py + 0.05 * c),
                (px + half * math.cos(a), py + half * math.sin(a)),
            ]
            draw.line(pts, fill=colour, width=max(1, round(0.045 * c)), joint="curve")
        else:
            r = 0.085 * c
            pts = [
                (px + r * rr * math.cos(t), py + r * rr * math.sin(t))
                for t, rr in zip(np.linspace(0, 2 * math.pi, 7)[:-1], defect["radii"], strict=True)
            ]
            draw.polygon(pts, fill=colour)


def draw_mark(draw, cx: float, cy: float, c: float, kind: str, colour, angle: float) -> None:
    """A star or a distractor mark, about 0.6 cell across, drawn over the terminal."""
    r = 0.3 * c
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            t = angle + i * math.pi / 5 - math.pi / 2
            pts.append((cx + rad * math.cos(t), cy + rad * math.sin(t)))
        draw.polygon(pts, fill=colour)
    elif kind == "circle":
        draw.ellipse(_box(cx, cy, 1.5 * r, 1.5 * r), fill=colour)
    elif kind == "triangle":
        pts = [
            (
                cx + r * math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2),
                cy + r * math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2),
            )
            for k in range(3)
        ]
        draw.polygon(pts, fill=colour)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=colour)
    else:
        raise ValueError(f"unknown mark {kind!r}")


def draw_coordinates(img: Image.Image, geom: Geometry, colour=(22, 22, 22)) -> None:
    """Print 1-9 above the columns and U, C, D left of the rows, on the final image.

    They are drawn after the nuisance step, like an annotation printed on a photo: the board may
    move by a fraction of a cell underneath, the coordinates do not. Pasted through the glyphs'
    coverage, drawn once per board width: the same blend, pixel for pixel, as drawing the text on
    the image, without rendering twelve glyphs for every image.
    """
    ink, boxes = _coordinate_ink(geom)
    if img.size != ink.size:
        raise ValueError(f"coordinates of a {geom.width}-pixel board on a {img.width} x {img.height} image")
    for box in boxes:
        img.paste(colour, box, ink.crop(box))


@functools.lru_cache(maxsize=16)
def _coordinate_ink(geom: Geometry) -> tuple[Image.Image, tuple[tuple[int, int, int, int], ...]]:
    """The coordinates' coverage (0-255) over a board image, and the boxes that hold all of it:
    the label row above the board and the label column left of it (or, where a glyph at a tiny
    width reaches past them, the bounding box of all the glyphs)."""
    ink = Image.new("L", (geom.width, geom.height), 0)
    _draw_coordinate_text(ink, geom, 255)
    x0, y0 = (math.ceil(v) for v in geom.board_box[:2])
    bands = ((0, 0, geom.width, y0), (0, y0, x0, geom.height))
    rest = ink.copy()
    for box in bands:
        rest.paste(0, box)
    return ink, bands if rest.getbbox() is None else (ink.getbbox(),)


def _draw_coordinate_text(img: Image.Image, geom: Geometry, colour) -> None:
    draw = ImageDraw.Draw(img)
    f = font(max(9, round(0.46 * geom.cell)))
    label_y = _LABEL_H * geom.cell / 2
    label_x = _LABEL_W * geom.cell / 2
    for col, name in enumerate(COLUMNS):
        cx, _ = geom.cell_center(0, col)
        draw.text((cx, label_y), str(name), fill=colour, font=f, anchor="mm")
    for row, name in enumerate(ROWS):
        _, cy = geom.cell_center(row, 0)
        draw.text((label_x, cy), name, fill=colour, font=f, anchor="mm")
