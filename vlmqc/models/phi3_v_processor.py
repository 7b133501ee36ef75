"""The published Phi-3(.5)-vision processor, rebuilt offline for ``vlmqc.inspect`` (``Phi3V.offline_processor``).

Written by hand because there is nothing to build it from: the published ``Phi3VProcessor`` is the
checkpoint's remote code (``processing_phi3_v.py`` on the hub), not part of transformers, and
inspect runs without the network. It follows that file's rules, read from it:

- HD transform: an image, turned to landscape, is scaled to ``scale * 336`` pixels wide, ``scale``
  the largest with ``scale * ceil(scale / ratio) <= num_crops``, then padded (white, centred) to a
  multiple of 336 high; its 336 x 336 crops, after one global view (the HD image resized to 336 x
  336), padded with zeros to ``num_crops + 1`` views;
- image tokens: ``(crops + 1) * 144 + 1 + (rows + 1) * 12`` for an HD image of ``rows`` crops down;
- ``<|image_N|>`` in the text becomes that many ids ``-N``; one prompt a call.

Pixels, crops and image tokens are then the published processor's; the text is tokenized with
the offline tokenizer (``offline.tokenizer``), an estimate of the published tokenizer's count.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP, TOKENS_PER_CROP = 336, 144
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) of the HD image: whole 336 crops, the aspect ratio kept up to the padding."""
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w, new_h = scale * CROP, int(scale * CROP / ratio)
    padded_h = math.ceil(new_h / CROP) * CROP
    return (padded_h, new_w) if transposed else (new_w, padded_h)


def image_tokens(width: int, height: int) -> int:
    """Image tokens of an HD image of this size (whole crops)."""
    rows, cols = height // CROP, width // CROP
    return (rows * cols + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * 12


class Phi3VImageProcessor:
    def __init__(self, num_crops: int):
        self.num_crops = num_crops

    def _hd(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        transposed = image.width < image.height
        if transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        width, height = hd_size(image.width, image.height, self.num_crops)
        scaled = image.resize((width, int(width / (image.width / image.height))), Image.Resampling.BILINEAR)
        top = (height - scaled.height) // 2
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(scaled, (0, top))
        if transposed:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)
        return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)

    def __call__(self, images: list[Image.Image]) -> dict:
        views, sizes, tokens = [], [], []
        for image in images:
            hd = self._hd(image)
            h, w = hd.shape[-2:]
            glob = F.interpolate(hd[None], size=(CROP, CROP), mode="bicubic")
            crops = hd.reshape(3, h // CROP, CROP, w // CROP, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
            view = torch.cat([glob, crops])
            views.append(F.pad(view, (0, 0, 0, 0, 0, 0, 0, self.num_crops + 1 - view.shape[0])))
            sizes.append([h, w])
            tokens.append(image_tokens(w, h))
        return {"pixel_values": torch.stack(views), "image_sizes": torch.tensor(sizes), "num_img_tokens": tokens}


class Phi3VProcessor:
    """One prompt a call, as the published one: text with ``<|image_1|>``, ``<|image_2|>``, ..."""

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def __call__(self, text: str, images: list[Image.Image], return_tensors: str = "pt") -> dict:
        image_inputs = self.image_processor(images)
        numbers = [int(n) for n in PLACEHOLDER.findall(text)]
        if sorted(set(numbers)) != list(range(1, len(images) + 1)):
            raise ValueError(f"image placeholders {numbers} do not number the {len(images)} images 1, 2, ...")
        ids = []
        for i, chunk in enumerate(PLACEHOLDER.split(text)):
            if i % 2:  # a placeholder's number
                ids += [-int(chunk)] * image_inputs["num_img_tokens"][int(chunk) - 1]
            else:
                ids += self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": image_inputs["pixel_values"],
            "image_sizes": image_inputs["image_sizes"],
        }
