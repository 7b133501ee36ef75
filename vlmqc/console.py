"""What a trial shows on the terminal: progress bars, one-line messages, a short table of facts.

transformers' Trainer prints a ``{'loss': ...}`` dict at every logging step (its PrinterCallback)
or draws its own bar that writes those dicts under it (ProgressCallback); both are replaced by
``TrainingBar``: one bar with the step, loss, learning rate, samples per second and tqdm's time
left. Evaluations draw their own bar (``progress``, used by vlmqc/predict.py). Everything goes to
stderr, so stdout stays for what a command is asked to print.

``quiet`` (the apps' ``quiet=true``) keeps the console to errors: no bars, vlmqc's and the
libraries' loggers at ERROR, W&B silent.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm
from transformers import TrainerCallback

_quiet = False


def setup(quiet: bool = False) -> None:
    """The console of an app: libraries' own progress bars off (vlmqc draws its own); with
    ``quiet``, errors only. (Warnings vlmqc cannot act on are silenced where they arise:
    ``vlmqc.models.peft_warnings_off``.)"""
    global _quiet
    _quiet = quiet
    import transformers

    # "Loading weights" / "Writing model shards": one bar per load and save of a tiny model;
    # vlmqc's own messages say what is loaded and saved
    transformers.utils.logging.disable_progress_bar()
    if quiet:
        logging.getLogger().setLevel(logging.ERROR)
        for name in ("vlmqc", "transformers", "datasets", "peft", "hydra"):
            logging.getLogger(name).setLevel(logging.ERROR)
        transformers.utils.logging.set_verbosity_error()
        os.environ["WANDB_SILENT"] = "true"


def is_quiet() -> bool:
    return _quiet


def progress(total: int, desc: str, unit: str, disable: bool = False, **kwargs) -> tqdm:
    """A bar on stderr: redrawn often on a terminal, every 30 s in a log file (CI), none when quiet."""
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=disable or _quiet,
        dynamic_ncols=tty,
        mininterval=0.2 if tty else 30,
        **kwargs,
    )


class TrainingBar(TrainerCallback):
    """One bar for training, on the main process: step / steps, loss, lr, samples/s, time left."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step = samples_per_step
        self.bar = None
        self._last = None  # (time, step) at the previous log, for samples/s

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress(state.max_steps, "training", "step", initial=state.global_step)
            self._last = (time.perf_counter(), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        fields = {"loss": f"{float(logs['loss']):.4f}", "lr": f"{float(logs.get('learning_rate', 0)):.2e}"}
        if self._last and now > self._last[0] and state.global_step > self._last[1]:
            fields["samples/s"] = (
                f"{(state.global_step - self._last[1]) * self.samples_per_step / (now - self._last[0]):.1f}"
            )
        self._last = (now, state.global_step)
        self.bar.set_postfix(fields, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def table(title: str, rows: dict) -> str:
    """``rows`` as aligned ``key  value`` lines under a title, for a log message."""
    width = max((len(k) for k in rows), default=0)
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows.items())])
