"""Weights & Biases, and the atomic file writes the records use.

The run folder's own records are written by ``vlmqc.records.Records`` (and described there). W&B
runs offline by default (``logger.mode=offline``): the real library writes a run folder that
``wandb sync`` can upload later. Only the main process (rank 0) creates any of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

STEP = "trainer/global_step"  # every metric's x axis in W&B


def write_atomic(path: Path, data: bytes) -> None:
    """A reader never sees half a file: written beside it, then renamed over it.

    The temporary file's name is its writer's own (pid and random, created exclusively), so two
    writers never share one; it sits in the same folder, so the rename stays on one filesystem,
    and it is removed when writing fails (a full disk). Created with the umask's permissions, as
    a plain open() would (mkstemp's 0600 would make reports unreadable to others).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Tracker:
    """W&B, or nothing. Errors inside W&B never take a trial down with them."""

    def __init__(self, logger_cfg, run_dir: Path, run_name: str, config: dict, resume_id: str | None, group: str | None = None, tags: list[str] = (), enabled: bool = True):
        self.run = None
        if not enabled or logger_cfg.name != "wandb" or logger_cfg.mode == "disabled":
            return
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=group,
            tags=list(tags),
            name=run_name,
            config=config,
            mode=logger_cfg.mode,
            dir=str(run_dir),
            id=resume_id,
            resume="allow" if resume_id else None,
            # W&B's 40-line history and summary after every trial of a sweep only when asked for
            settings=wandb.Settings(quiet=not logger_cfg.print_summary),
        )
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)

    @property
    def id(self) -> str | None:
        return self.run.id if self.run else None

    @property
    def dir(self) -> str | None:
        return self.run.dir if self.run else None

    def config(self, facts: dict) -> None:
        if self.run:
            self.run.config.update(facts, allow_val_change=True)

    def log(self, metrics: dict, step: int) -> None:
        if self.run:
            self.run.log({**metrics, STEP: step})

    def samples(self, samples: list, images: dict, step: int) -> None:
        """The inference samples (``vlmqc.records.Sample``) as a table; ``images`` maps id to PIL image."""
        if not self.run:
            return
        columns = ["step", "id", "image", "prompt", "truth", "prediction", "correct"]
        table = self.wandb.Table(columns=columns)
        for s in samples:
            table.add_data(step, s.id, self.wandb.Image(images[s.id]), s.prompt, s.truth, s.prediction, s.correct)
        self.run.log({"eval/predictions": table, STEP: step})

    def summary(self, fields: dict) -> None:
        if self.run:
            for k, v in fields.items():
                self.run.summary[k] = v

    def finish(self, status: str) -> None:
        if self.run:
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None
