"""Turning dataset rows into model inputs: the family's prompt format, images, and the label mask.

The loss covers the answer only. Which tokens are the answer is found by encoding the prompt
alone (with its images, so image tokens are expanded exactly as in the full sequence) and
checking that it is a prefix of prompt + answer; everything before it, and the padding, is
masked. No token id is guessed, so the end-of-turn token the format puts after the answer is
learnt too, and a format that breaks the prefix property fails loudly. How prompt and answer are
written is the family's (``Family.encode``), the same for every family here.
"""

from __future__ import annotations

import io
import json

import torch
from PIL import Image

from vlmqc.config import Layout, PromptConfig
from vlmqc.data.layout import images as row_images
from vlmqc.features import attach_keys
from vlmqc.tasks import answer_text, prompt_text

IGNORE = -100  # the label value cross-entropy skips


class Collator:
    """Rows -> a padded batch. ``train=True``: prompt + answer with labels, padded on the right;
    ``train=False``: the prompt alone, padded on the left, ready for ``generate``.
    ``image_keys``: each image's key for the vision feature cache (vlmqc/features.py) in the batch."""

    def __init__(
        self,
        processor,
        family,
        prompt: PromptConfig,
        train: bool,
        layout: Layout = Layout.stacked,
        image_keys: bool = False,
    ):
        self.processor, self.family, self.prompt, self.train, self.layout = processor, family, prompt, train, layout
        self.image_keys = image_keys

    def __call__(self, examples: list[dict]) -> dict:
        images = [row_images(ex, self.layout) for ex in examples]
        instructions = [prompt_text(self.prompt, ex, len(imgs)) for ex, imgs in zip(examples, images, strict=True)]

        def encode(answers, side):
            return self.family.encode(self.processor, instructions, images, answers, side)

        if not self.train:
            return encode(None, "left")
        batch = encode([answer_text(self.prompt, ex) for ex in examples], "right")
        prompt_only = encode(None, "right")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE
        for i, n in enumerate(prompt_only["attention_mask"].sum(dim=1).tolist()):
            if not torch.equal(batch["input_ids"][i, :n], prompt_only["input_ids"][i, :n]):
                raise ValueError(
                    f"example {examples[i].get('id')!r}: the prompt does not tokenize to a prefix of prompt + "
                    f"answer, so the answer tokens cannot be found"
                )
            labels[i, :n] = IGNORE
        batch["labels"] = labels
        return attach_keys(batch, images) if self.image_keys else batch


def sequence_lengths(collator: Collator, dataset) -> list[int]:
    """Each row's training sequence length, prompt, image tokens and answer, for
    ``trainer.group_by_length`` (transformers' LengthGroupedSampler reads it as the ``length`` column).

    Collating every row would decode and process every image before training starts; instead one
    row of each kind (task, image size, pair geometry: what sets the prompt and image tokens) is
    collated, and the others differ from it by their answers' token counts. Exact unless the
    tokenizer merges across the prompt/answer boundary, which the label mask already refuses. A
    row's own prompt (``question``) and the sizes of the images shown before it (``context``) are
    part of its kind.
    """
    import datasets

    columns = [c for c in ("image", "meta", "context") if c in dataset.column_names]
    headers = dataset.select_columns(columns).cast_column("image", datasets.Image(decode=False))
    if "context" in columns:
        headers = headers.cast_column("context", datasets.List(datasets.Image(decode=False)))
    answers = dataset.remove_columns([c for c in ("image", "source_image", "context") if c in dataset.column_names])
    tokenizer = getattr(collator.processor, "tokenizer", collator.processor)
    counts = [
        len(ids)
        for ids in tokenizer([answer_text(collator.prompt, row) for row in answers], add_special_tokens=False)[
            "input_ids"
        ]
    ]
    base: dict[tuple, int] = {}  # kind -> its sequence length less its answer's tokens
    lengths = []
    for i, (header, row) in enumerate(zip(headers, answers, strict=True)):
        sizes = tuple(_size(im) for im in [*(header.get("context") or []), header["image"]])
        kind = (
            row["task"],
            sizes,
            json.dumps(json.loads(header.get("meta") or "{}").get("stack")),
            row.get("question"),
        )
        if kind not in base:
            base[kind] = int(collator([dataset[i]])["attention_mask"].sum()) - counts[i]
        lengths.append(base[kind] + counts[i])
    return lengths


def _size(image: dict):
    """An encoded image's size, from its header alone (its path where it has no bytes)."""
    return Image.open(io.BytesIO(image["bytes"])).size if image["bytes"] else image["path"]
