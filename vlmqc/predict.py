"""Batched greedy generation over a dataset: the answers a trial is judged on."""

from __future__ import annotations

import torch

from vlmqc.collate import Collator
from vlmqc.config import PromptConfig
from vlmqc.prompts import parse_answer


@torch.no_grad()
def predict(model, processor, prompt: PromptConfig, rows: list[dict], batch_size: int, max_new_tokens: int) -> list[dict]:
    """One prediction per row, in order: the generated text and what the parser read in it."""
    collate = Collator(processor, prompt, train=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
            tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in zip(chunk, texts, strict=True):
                out.append({"id": row["id"], "text": text.strip(), "parsed": parse_answer(prompt, text, row["task"])})
    finally:
        model.train(was_training)
    return out
