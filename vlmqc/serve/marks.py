"""Where the answer points: the predicted cells outlined on the candidate, drawn with PIL.

The cells come from the board geometry the data was drawn with (``vlmqc.data.board``), scaled
to the image's width; an image of another shape (a custom trial's own photos) is shown unmarked,
with the reason, rather than with boxes in the wrong place.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from vlmqc.data import board
from vlmqc.data.synth import pair_gap
from vlmqc.labels import cell_index

MARK = (255, 32, 160)  # magenta: no board look, terminal or defect is drawn in it
TOLERANCE = 2  # pixels of height a board image may differ from the geometry's by rounding
MAX_SHOWN_PIXELS = 4_000_000  # an image is enlarged only up to this size: a 25-megapixel upload is shown as it is


def is_board(image: Image.Image) -> bool:
    return abs(image.height - board.Geometry(image.width).height) <= TOLERANCE


def split_pair(image: Image.Image) -> tuple[Image.Image, Image.Image] | None:
    """A stacked pair (reference on top, the gap, candidate below) cut in two; None if it is not one."""
    geom = board.Geometry(image.width)
    gap = pair_gap(image.width)
    if abs(image.height - (2 * geom.height + gap)) > TOLERANCE:
        return None
    return image.crop((0, 0, image.width, geom.height)), image.crop((0, geom.height + gap, image.width, image.height))


def positions_of(answer: dict) -> list[str]:
    """The positions an answer names: its defects', or the star's target."""
    found = [d["position"] for d in answer.get("defects") or [] if d.get("position")]
    if answer.get("target"):
        found.append(answer["target"])
    return found


def mark(image: Image.Image, positions: list[str], upscale: int = 2) -> tuple[Image.Image, str | None]:
    """The image, enlarged ``upscale`` times, with each named cell outlined; and why nothing was
    marked, when the grid cannot be placed or a position is not on it. The enlargement stops at
    ``MAX_SHOWN_PIXELS`` (a large upload is drawn on at its own size), bounding the page's memory."""
    while upscale > 1 and image.width * image.height * upscale**2 > MAX_SHOWN_PIXELS:
        upscale -= 1
    out = image.convert("RGB").resize((image.width * upscale, image.height * upscale), Image.Resampling.LANCZOS)
    if not positions:
        return out, None
    if not is_board(image):
        return (
            out,
            f"the grid cannot be placed on a {image.width} x {image.height} image (not a board image of this "
            f"trial's layout)",
        )
    geom = board.Geometry(out.width)
    draw = ImageDraw.Draw(out)
    width = max(2, round(geom.cell / 14))
    bad = []
    for pos in positions:
        try:
            row, col = cell_index(pos)
        except ValueError:
            bad.append(pos)
            continue
        x0, y0, x1, y1 = geom.cell_box(row, col)
        draw.rectangle((x0 - width, y0 - width, x1 + width, y1 + width), outline=MARK, width=width)
    return out, (f"not on the grid: {', '.join(bad)}" if bad else None)
