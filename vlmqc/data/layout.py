"""``data.layout``: the images a row is shown to the model as.

``stacked``: the row's one image (a pair: reference on top, candidate below, as stored).
``separate``: a pair as two images, reference first, then candidate: a stored stacked pair is
cut at the gap its meta records (``stack``: the top image's height and the gap), without drawing
it again; a custom row stored unstacked gives its reference (``source_image``) and its image. A
custom row without a reference stays one image.

A row read from a published layout (vlmqc/data/folder.py) keeps the images shown before its
query unstacked (``context``: an MVTec query's good reference, MMAD's templates, a conversation's
leading images): ``separate`` gives them in order, then the query; ``stacked`` stacks them, query
last at the bottom, each scaled to the query's width, for a family that takes one image.
"""

from __future__ import annotations

import json

from PIL import Image

from vlmqc.config import Layout


def stack_all(images: list[Image.Image]) -> Image.Image:
    """The images top to bottom, each scaled to the last one's width, a dark band between them
    (as the pair task and custom data stack a pair: vlmqc/data/synth.py, custom.py)."""
    width = images[-1].width
    scaled = [
        im if im.width == width else im.resize((width, max(1, round(im.height * width / im.width))), Image.BICUBIC)
        for im in images
    ]
    gap = max(2, width // 100)
    out = Image.new("RGB", (width, sum(im.height for im in scaled) + gap * (len(scaled) - 1)), (40, 40, 40))
    top = 0
    for im in scaled:
        out.paste(im, (0, top))
        top += im.height + gap
    return out


def images(row: dict, layout: Layout) -> list[Image.Image]:
    image = row["image"].convert("RGB")
    context = [im.convert("RGB") for im in row.get("context") or []]
    if context:
        return [*context, image] if Layout(layout) is Layout.separate else [stack_all([*context, image])]
    if Layout(layout) is Layout.stacked or row["task"] not in ("pair", "custom"):
        return [image]
    stack = json.loads(row.get("meta") or "{}").get("stack")
    if stack is not None:
        top, gap = stack["top"], stack["gap"]
        return [image.crop((0, 0, image.width, top)), image.crop((0, top + gap, image.width, image.height))]
    if row.get("source_image") is not None:
        return [row["source_image"].convert("RGB"), image]
    if row["task"] == "pair":
        raise ValueError(
            f"row {row.get('id')!r}: a pair without the stack geometry in its meta cannot be split for "
            f"data.layout=separate"
        )
    return [image]
