"""The trial's callback into transformers' Trainer: what each log and each evaluation records.

- every log: ``train/...`` and ``eval/...`` names, throughput and peak GPU memory added, handed to
  the Recorder (the run folder and W&B); a non-finite loss stops training, on every rank;
- every evaluation: batched greedy generation on the test split (every rank takes its share),
  the inspection metrics, every prediction, the inference samples for the fixed test ids, and
  the summary's final / baseline / best (from metrics.jsonl, so a resumed trial's best includes
  the earlier attempts').
"""

from __future__ import annotations

import logging
import math
import time

import torch
from transformers import TrainerCallback

from vlmqc.data.layout import images as row_images
from vlmqc.evaluation import choice
from vlmqc.evaluation.generate import EvaluationStopped, predict_sharded
from vlmqc.evaluation.scoring import score
from vlmqc.runs.recorder import Recorder
from vlmqc.runs.records import PredictionRow, Sample, sample_image
from vlmqc.tasks import answer_text, prompt_text
from vlmqc.training.signals import Interrupted, StopOnSignal

log = logging.getLogger(__name__)


class RecordingCallback(TrainerCallback):
    def __init__(
        self,
        trainer_cfg,
        prompt,
        layout,
        recorder: Recorder,
        processor,
        family,
        test_rows: list[dict],
        sample_ids: list[str],
        metric: str,
        stopper: StopOnSignal | None = None,
    ):
        self.t, self.prompt, self.layout, self.recorder = trainer_cfg, prompt, layout, recorder
        self.processor, self.family = processor, family
        self.test_rows, self.sample_ids, self.metric = test_rows, set(sample_ids), metric
        self.stopper = stopper  # a signal during an evaluation ends it between two batches
        self.nonfinite_step: int | None = None
        self.evaluated_step: int | None = None
        self._last = None  # (time, step, tokens) at the previous training log, for throughput

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        # every rank sees the same (all-reduced) loss and stops on it: one rank stopping alone would hang the others
        if "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.nonfinite_step = state.global_step
            control.should_training_stop = True
        if not state.is_world_process_zero:
            return
        metrics = {}
        for k, v in logs.items():
            if k.startswith("eval_"):
                metrics[f"eval/{k[5:]}"] = v
            elif k in ("loss", "learning_rate", "grad_norm", "epoch"):
                metrics[f"train/{k}"] = v
            elif k == "train_loss":  # the end-of-training summary: the mean over all steps
                metrics["train/mean_loss"] = v
            elif k.startswith("train_"):  # and runtime, samples per second, ... over the whole run, warm-up included:
                metrics[f"train/overall_{k[6:]}"] = (
                    v  # not to be confused with the per-interval train/samples_per_second
                )
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            if self._last is not None and now > self._last[0]:
                dt, steps = now - self._last[0], state.global_step - self._last[1]
                samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                metrics["train/samples_per_second"] = samples / dt
                metrics["train/tokens_per_second"] = (tokens - self._last[2]) / dt
            self._last = (now, state.global_step, tokens)
            if torch.cuda.is_available():
                metrics["train/peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if metrics:
            self.recorder.log(metrics, state.global_step)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        t = self.t
        try:
            preds = predict_sharded(
                model,
                self.processor,
                self.family,
                self.prompt,
                self.test_rows,
                t.eval_batch_size,
                t.max_new_tokens,
                self.layout,
                t.eval_workers,
                stop=(lambda: self.stopper.signals.received) if self.stopper is not None else None,
            )
        except EvaluationStopped as e:
            # a part of an evaluation is no evaluation: nothing of it is recorded
            log.warning("%s: the evaluation at step %d is not recorded", e, state.global_step)
            if state.global_step == 0:  # the base model's: nothing trained, nothing to save
                raise Interrupted(e.name) from None
            # the Trainer saves this step's checkpoint next (it evaluates, then saves) and stops
            self.stopper.step, self.stopper.name = state.global_step, e.name
            control.should_save = control.should_training_stop = True
            return
        self.evaluated_step = (
            state.global_step
        )  # on every rank: whether to evaluate again must not differ between ranks
        if not state.is_world_process_zero:
            return
        step, parsed = state.global_step, [p["parsed"] for p in preds]
        scores = {
            f"eval/{k}": v for k, v in score(self.test_rows, parsed).items()
        }  # eval/loss was logged by on_log, which the Trainer calls first
        rows = [PredictionRow.of(row, p["text"], p["parsed"]) for row, p in zip(self.test_rows, preds, strict=True)]
        samples, images = [], {}
        for row, pred in zip(self.test_rows, preds, strict=True):
            if row["id"] in self.sample_ids:
                correct = score([row], [pred["parsed"]]).get("exact_match") == 1.0
                shown = prompt_text(self.prompt, row, len(row_images(row, self.layout)))
                samples.append(
                    Sample(
                        id=row["id"],
                        step=step,
                        image=sample_image(row["id"]),
                        prompt=shown,
                        truth=answer_text(self.prompt, row),
                        prediction=pred["text"],
                        correct=correct,
                    )
                )
                images[row["id"]] = row["image"]
        mmad = choice.answers_file(self.test_rows, parsed)  # empty unless the rows are MMAD's questions
        diagnosis = self.recorder.evaluation(
            step, scores, rows, samples, images, self.metric, len(self.test_rows), mmad
        )
        if (diagnosis or {}).get("plateau"):
            d = diagnosis
            log.warning(
                "step %d: the training loss is flat (%.1f%% fall over the last third) while %s=%.3f is at chance "
                "(%.3f, %s)%s: the plateau; train longer or with warm-up (experiments/LOG.md)",
                step,
                100 * d["loss_change"],
                d["metric"],
                d["value"],
                d["chance"],
                d["kind"],
                "".join(
                    f"; {m[5:]}={x['value']:.3f} is above its chance ({x['chance']:.3f}, {x['kind']})"
                    for m, x in d["metrics"].items()
                    if not x["at_chance"]
                ),
            )
        log.info("step %d: %s", step, ", ".join(f"{k[5:]}={v:.3f}" for k, v in sorted(scores.items())))
