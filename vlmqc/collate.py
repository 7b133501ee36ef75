"""Turning dataset rows into model inputs: the family's prompt format, images, and the label mask.

The loss covers the answer only. Which tokens are the answer is found by encoding the prompt
alone (with its images, so image tokens are expanded exactly as in the full sequence) and
checking that it is a prefix of prompt + answer; everything before it, and the padding, is
masked. No token id is guessed, so the end-of-turn token the format puts after the answer is
learnt too, and a format that breaks the prefix property fails loudly. How prompt and answer are
written is the family's (``Family.encode``), the same for every family here.
"""

from __future__ import annotations

import torch

from vlmqc.config import Layout, PromptConfig
from vlmqc.data.layout import images as row_images
from vlmqc.features import attach_keys
from vlmqc.prompts import instruction, render_answer

IGNORE = -100  # the label value cross-entropy skips


class Collator:
    """Rows -> a padded batch. ``train=True``: prompt + answer with labels, padded on the right;
    ``train=False``: the prompt alone, padded on the left, ready for ``generate``.
    ``image_keys``: each image's key for the vision feature cache (vlmqc/features.py) in the batch."""

    def __init__(self, processor, family, prompt: PromptConfig, train: bool, layout: Layout = Layout.stacked, image_keys: bool = False):
        self.processor, self.family, self.prompt, self.train, self.layout = processor, family, prompt, train, layout
        self.image_keys = image_keys

    def __call__(self, examples: list[dict]) -> dict:
        images = [row_images(ex, self.layout) for ex in examples]
        instructions = [instruction(self.prompt, ex["task"], len(imgs)) for ex, imgs in zip(examples, images, strict=True)]

        def encode(answers, side):
            return self.family.encode(self.processor, instructions, images, answers, side)

        if not self.train:
            return encode(None, "left")
        batch = encode([render_answer(self.prompt, ex) for ex in examples], "right")
        prompt_only = encode(None, "right")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE
        for i, n in enumerate(prompt_only["attention_mask"].sum(dim=1).tolist()):
            if not torch.equal(batch["input_ids"][i, :n], prompt_only["input_ids"][i, :n]):
                raise ValueError(
                    f"example {examples[i].get('id')!r}: the prompt does not tokenize to a prefix of prompt + answer, so the answer tokens cannot be found"
                )
            labels[i, :n] = IGNORE
        batch["labels"] = labels
        return attach_keys(batch, images) if self.image_keys else batch
