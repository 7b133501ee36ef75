"""``trainer.loss=answer_only``: the output head and the cross-entropy at the answer positions only.

    python -m vlmqc.train trainer.loss=answer_only        # the same loss and gradients, less compute

The label mask (vlmqc/collate.py) leaves about ten answer tokens of a sequence of 200-400 (image
tokens included), yet a model computes the logits of every position before its loss: batch x
sequence x vocabulary floats (151,936 for Qwen2-VL: GBs), and the output head alone is about an
eighth of the forward's FLOPs. Here the forward still computes every hidden state, but the head
runs only on the span of positions that predict a label in some row of the batch, through the
model's own ``logits_to_keep`` (a 1-D index tensor: every row keeps the same positions). The
loss is the model's own too: the labels, shifted and cut to that span, go in as ``shift_labels``,
which transformers' causal-LM loss (``ForCausalLMLoss``) takes instead of shifting ``labels``
itself; the same float upcast, ignore index and normalisation, the gradient-accumulation-correct
``num_items_in_batch`` and the DDP scaling of ``Trainer.compute_loss`` included, since that is
what runs. Evaluation's loss (``Trainer.prediction_step``) goes through the same ``compute_loss``.

A model whose forward takes no ``logits_to_keep``, or no loss keywords, gets the full path with
one warning; which path ran is the trial's ``facts.loss``.
"""

from __future__ import annotations

import inspect
import logging

import torch
from transformers import Trainer

from vlmqc.collate import IGNORE
from vlmqc.config import LossMode

log = logging.getLogger(__name__)


def answer_span(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, shift_labels)``: the positions whose next token is a label in some row (one
    contiguous span, as a 1-D index tensor), and each row's next-token labels there, ``IGNORE``
    elsewhere. A batch without any label keeps its last position, whose target is ignored."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)  # position i predicts token i + 1
    columns = (shifted != IGNORE).any(dim=0).nonzero().flatten()
    if columns.numel() == 0:
        lo = hi = labels.shape[1] - 1
    else:
        lo, hi = int(columns[0]), int(columns[-1])
    keep = torch.arange(lo, hi + 1, device=labels.device)
    return keep, shifted[:, lo : hi + 1].contiguous()


def supports_answer_only(model: torch.nn.Module) -> str | None:
    """None if the model (or the model a PEFT wrapper holds) can keep only some logits and pass
    ``shift_labels`` on to its loss; else why not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    if "logits_to_keep" not in params:
        return f"{type(base).__name__}.forward takes no logits_to_keep"
    if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return f"{type(base).__name__}.forward takes no loss keywords (shift_labels)"
    return None


class AnswerOnlyTrainer(Trainer):
    """transformers' Trainer whose ``compute_loss`` keeps the logits of the answer span only."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if labels is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        keep, shift_labels = answer_span(labels)
        # labels stay in: the model computes a loss only when given them, and the Trainer counts
        # its tokens from them; shift_labels, when given, is what the loss uses instead
        return super().compute_loss(
            model, {**inputs, "logits_to_keep": keep, "shift_labels": shift_labels}, return_outputs, num_items_in_batch
        )


def trainer_class(mode: LossMode, model: torch.nn.Module) -> tuple[type[Trainer], LossMode]:
    """The Trainer class for ``trainer.loss`` and the path that will really run."""
    if LossMode(mode) == LossMode.full:
        return Trainer, LossMode.full
    why = supports_answer_only(model)
    if why is not None:
        log.warning("trainer.loss=answer_only: %s; the full loss runs instead", why)
        return Trainer, LossMode.full
    return AnswerOnlyTrainer, LossMode.answer_only
