"""SIGTERM and SIGINT (Ctrl-C) stop a trial cleanly: at the end of the current training step, with
a checkpoint, so that running the same command again resumes from it.

A scheduler's SIGTERM (Slurm's pre-emption, a container's stop) or a Ctrl-C otherwise lands
anywhere: Python's default KeyboardInterrupt mid-step, or, for SIGTERM, death without a record.
Here a signal during training only asks; ``StopOnSignal`` (a Trainer callback) answers at the
end of the step by setting the Trainer's own ``should_save`` and ``should_training_stop``, so the
checkpoint is the Trainer's usual one; an evaluation by generation asks between its batches, and
stops there unrecorded (vlmqc/training/recording.py). Outside training (loading data or the model) there is
nothing to save, and the signal stops the trial at once (``Interrupted``). A second signal of the
same kind, two seconds or more after the first, also stops at once: the person means it. (Within
two seconds it is the same request delivered twice: a terminal's Ctrl-C reaches every process of
the group, and the elastic launcher passes its own on to the ranks.)

Under DDP the ranks agree at every step end (an all-reduce of one number), so all stop at the
same step, whichever of them got the signal; a rank stopping alone would hang the others.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger(__name__)
HANDLED = (signal.SIGINT, signal.SIGTERM)
REPEAT_SECONDS = 2.0


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, which it stands for: not an error of the trial
    """A signal stopped the trial where there was nothing to save."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Signals:
    """``with Signals() as s:`` handles SIGINT and SIGTERM for the block (in the main thread only,
    where Python delivers signals); ``s.received`` is the first signal's name."""

    def __init__(self):
        self.received: str | None = None
        self.graceful = False  # True while a StopOnSignal callback is there to stop at a step end
        self._at = 0.0
        self._old: dict = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum: int, frame) -> None:
        name, now = signal.Signals(signum).name, time.monotonic()
        if self.received is None:
            self.received, self._at = name, now
        elif name == self.received and now - self._at < REPEAT_SECONDS:
            return  # the same request, delivered twice
        else:
            raise Interrupted(name)  # asked again: stop now
        if not self.graceful:
            raise Interrupted(name)
        log.warning(
            "%s: stopping at the end of this step (or of this evaluation batch), with a checkpoint (send it again to "
            "stop at once)",
            name,
        )


class StopOnSignal(TrainerCallback):
    """Stop at the end of the step in which a signal came, saving a checkpoint; ``step`` and
    ``name`` tell where and why (on every rank)."""

    def __init__(self, signals: Signals):
        self.signals = signals
        self.step: int | None = None
        self.name: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = int(signal.Signals[self.signals.received]) if self.signals.received else 0
        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            agreed = torch.tensor([signum], device=args.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            signum = int(agreed.item())
        if signum:
            self.step, self.name = state.global_step, signal.Signals(signum).name
            control.should_save = True
            control.should_training_stop = True
