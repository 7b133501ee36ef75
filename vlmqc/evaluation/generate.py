"""Batched greedy generation over rows of a dataset: the answers a trial is judged on, during
training (every evaluation, ``predict_sharded`` over the ranks) and after it (vlmqc/inspector.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlmqc.collate import Collator
from vlmqc.config import Layout, PromptConfig
from vlmqc.tasks import parse


class EvaluationStopped(Exception):  # noqa: N818 - a request, not an error
    """``stop`` asked ``predict`` to end between two batches (a signal's name); ``done`` rows were answered."""

    def __init__(self, name: str, done: int, total: int):
        super().__init__(f"{name}: stopped after {done} of {total} rows")
        self.name, self.done, self.total = name, done, total


def _batches(collate: Collator, rows: list[dict], batch_size: int, workers: int):
    """The collated batches of ``rows[0:batch_size]``, ``rows[batch_size:2 * batch_size]``, ...:
    in this process, or, with ``workers``, in a torch DataLoader's worker processes while the
    model generates for the batch before (the processor's image decode, resize and normalise
    would otherwise keep the GPU waiting). The same slices either way, so the same padding."""
    if workers == 0:
        return (collate(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size))
    from torch.utils.data import DataLoader

    # a list is a map-style dataset; sequential order, no drop_last: the slices above, batch for batch
    return iter(DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers))


@torch.no_grad()
def predict(
    model,
    processor,
    family,
    prompt: PromptConfig,
    rows: list[dict],
    batch_size: int,
    max_new_tokens: int,
    layout: Layout = Layout.stacked,
    workers: int = 0,
    progress: bool = True,
    stop: Callable[[], str | None] | None = None,
) -> list[dict]:
    """One prediction per row, in order: the generated text and what the parser read in it.
    ``workers`` (trainer.eval_workers): processes that collate the batches; the answers are the same.
    ``progress``: a bar of rows done and rows per second on stderr (vlmqc/console.py).
    ``stop``: asked before every batch; a name it returns (a signal's) ends the evaluation there,
    raising ``EvaluationStopped``, so a SIGTERM waits for one batch, not for every row."""
    from vlmqc import console

    collate = Collator(processor, family, prompt, train=False, layout=layout)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    out = []
    bar = console.progress(len(rows), "evaluating", "row", disable=not progress)
    try:
        for start, collated in zip(
            range(0, len(rows), batch_size), _batches(collate, rows, batch_size, workers), strict=True
        ):
            if stop is not None and (name := stop()):
                raise EvaluationStopped(name, start, len(rows))
            chunk = rows[start : start + batch_size]
            # image inputs (whatever a family's processor names them) in the model's precision
            batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in collated.items()}
            tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in zip(chunk, texts, strict=True):
                out.append({"id": row["id"], "text": text.strip(), "parsed": parse(prompt, text, row)})
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out


def predict_sharded(
    model,
    processor,
    family,
    prompt: PromptConfig,
    rows: list[dict],
    batch_size: int,
    max_new_tokens: int,
    layout: Layout = Layout.stacked,
    workers: int = 0,
    stop: Callable[[], str | None] | None = None,
) -> list[dict]:
    """``predict`` spread over the ranks of a distributed run; every rank gets all predictions.
    ``stop`` is asked between batches in a single process only: ranks stopping at different
    batches would wait for each other's answers for ever (under DDP a signal stops at the next
    step end, as in training).

    Whole batches are dealt out (batch k to rank k mod world size), so each batch holds the
    same rows, padded the same way, as in a single process: the predictions are the ones a
    single-process evaluation of the same model gives, not merely close to them. A rank's
    batches go to one ``predict`` call, their rows end to end: every batch but the very last is
    full, and the last is its rank's last, so ``predict`` cuts them where they were cut (and
    starts its collating workers once, not once a batch).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return predict(model, processor, family, prompt, rows, batch_size, max_new_tokens, layout, workers, stop=stop)
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    ks = list(range(rank, len(batches), world))
    answers = predict(
        model,
        processor,
        family,
        prompt,
        [r for k in ks for r in batches[k]],
        batch_size,
        max_new_tokens,
        layout,
        workers,
        progress=rank == 0,
    )
    mine = {k: answers[i * batch_size : (i + 1) * batch_size] for i, k in enumerate(ks)}
    gathered: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    merged = {k: v for part in gathered for k, v in part.items()}
    return [p for k in range(len(batches)) for p in merged[k]]
