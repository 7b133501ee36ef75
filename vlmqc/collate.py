"""Turning dataset rows into model inputs: chat messages, images, and the label mask.

The loss covers the answer only. Which tokens are the answer is found by tokenizing the prompt
alone (with its image, so image tokens are expanded exactly as in the full sequence) and
checking that it is a prefix of prompt + answer; everything before it, and the padding, is
masked. No token id is guessed, so the end-of-turn token the chat template puts after the
answer is learnt too, and a template that breaks the prefix property fails loudly.
"""

from __future__ import annotations

import torch

from vlmqc.config import PromptConfig
from vlmqc.prompts import instruction, render_answer

IGNORE = -100  # the label value cross-entropy skips


def messages(prompt: PromptConfig, example: dict, answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction(prompt, example["task"])}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


class Collator:
    """Rows -> a padded batch. ``train=True``: prompt + answer with labels, padded on the right;
    ``train=False``: the prompt alone, padded on the left, ready for ``generate``."""

    def __init__(self, processor, prompt: PromptConfig, train: bool):
        self.processor, self.prompt, self.train = processor, prompt, train

    def _encode(self, texts: list[str], images: list, side: str) -> dict:
        return self.processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side=side)

    def __call__(self, examples: list[dict]) -> dict:
        images = [ex["image"].convert("RGB") for ex in examples]
        template = self.processor.apply_chat_template
        prompts = [template(messages(self.prompt, ex), add_generation_prompt=True) for ex in examples]
        if not self.train:
            return dict(self._encode(prompts, images, "left"))
        fulls = [template(messages(self.prompt, ex, render_answer(self.prompt, ex))) for ex in examples]
        batch = self._encode(fulls, images, "right")
        prompt_only = self._encode(prompts, images, "right")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE
        for i, n in enumerate(prompt_only["attention_mask"].sum(dim=1).tolist()):
            if not torch.equal(batch["input_ids"][i, :n], prompt_only["input_ids"][i, :n]):
                raise ValueError(
                    f"example {examples[i].get('id')!r}: the chat template's prompt does not tokenize to a prefix of prompt + answer, so the answer tokens cannot be found"
                )
            labels[i, :n] = IGNORE
        batch["labels"] = labels
        return dict(batch)
