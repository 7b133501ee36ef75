"""Batched greedy generation over a dataset: the answers a trial is judged on."""

from __future__ import annotations

import torch

from vlmqc.collate import Collator
from vlmqc.config import Layout, PromptConfig
from vlmqc.prompts import parse_answer


@torch.no_grad()
def predict(
    model, processor, family, prompt: PromptConfig, rows: list[dict], batch_size: int, max_new_tokens: int, layout: Layout = Layout.stacked
) -> list[dict]:
    """One prediction per row, in order: the generated text and what the parser read in it."""
    collate = Collator(processor, family, prompt, train=False, layout=layout)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            # image inputs (whatever a family's processor names them) in the model's precision
            batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in collate(chunk).items()}
            tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in zip(chunk, texts, strict=True):
                out.append({"id": row["id"], "text": text.strip(), "parsed": parse_answer(prompt, text, row["task"])})
    finally:
        model.train(was_training)
    return out


def predict_sharded(
    model, processor, family, prompt: PromptConfig, rows: list[dict], batch_size: int, max_new_tokens: int, layout: Layout = Layout.stacked
) -> list[dict]:
    """``predict`` spread over the ranks of a distributed run; every rank gets all predictions.

    Whole batches are dealt out (batch k to rank k mod world size), so each batch holds the
    same rows, padded the same way, as in a single process: the predictions are the ones a
    single-process evaluation of the same model gives, not merely close to them.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return predict(model, processor, family, prompt, rows, batch_size, max_new_tokens, layout)
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    mine = {k: predict(model, processor, family, prompt, batches[k], batch_size, max_new_tokens, layout) for k in range(rank, len(batches), world)}
    gathered: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    merged = {k: v for part in gathered for k, v in part.items()}
    return [p for k in range(len(batches)) for p in merged[k]]
