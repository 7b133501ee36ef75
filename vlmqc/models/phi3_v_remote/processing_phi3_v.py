"""Phi3VProcessor of the tiny remote-code Phi-3-vision: Phi's ``<|image_1|>``, ``<|image_2|>``, ...
placeholders, one prompt a call, as the published Phi3VProcessor takes them."""

import re

from transformers import LlavaProcessor

PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")


class Phi3VProcessor(LlavaProcessor):
    def __call__(self, text=None, images=None, return_tensors=None, **kwargs):
        if not isinstance(text, str):
            raise ValueError("Phi3VProcessor takes one prompt a call")
        numbers = [int(n) for n in PLACEHOLDER.findall(text)]
        if numbers != list(range(1, len(numbers) + 1)) or len(numbers) != len(images or []):
            raise ValueError(f"image placeholders {numbers} do not number the {len(images or [])} images 1, 2, ...")
        return super().__call__(
            text=[PLACEHOLDER.sub(self.image_token, text)], images=images, return_tensors=return_tensors, **kwargs
        )
