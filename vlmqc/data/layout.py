"""``data.layout``: the images a row is shown to the model as.

``stacked``: the row's one image (a pair: reference on top, candidate below, as stored).
``separate``: a pair as two images, reference first, then candidate: a stored stacked pair is
cut at the gap its meta records (``stack``: the top image's height and the gap), without drawing
it again; a custom row stored unstacked gives its reference (``source_image``) and its image. A
custom row without a reference stays one image.
"""

from __future__ import annotations

import json

from PIL import Image

from vlmqc.config import Layout


def images(row: dict, layout: Layout) -> list[Image.Image]:
    image = row["image"].convert("RGB")
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
