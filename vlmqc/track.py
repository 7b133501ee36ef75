"""A trial's records: in its run folder always, in Weights & Biases when ``logger=wandb``.

The run folder holds, independent of any account:
- ``metrics.jsonl``: every logged step, one JSON object a line (``train/…``, ``eval/…``);
- ``samples/step-<N>.jsonl`` and ``samples/images/<id>.png``: inference samples, always the
  same test ids, so trials line up row by row;
- ``predictions/step-<N>.jsonl``: every test prediction of an evaluation, parsed, with its labels;
- ``summary.json``: status (running / completed / failed / interrupted), the reason and step
  of a failure, final and best metrics, and the facts of the run (resolution, image tokens,
  parameters, dataset hash, git commit). Written atomically, and rewritten in ``finally``.

W&B runs offline by default (``logger.mode=offline``): the real library writes a run folder that
``wandb sync`` can upload later. Only the main process (rank 0) creates any of this.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import time
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


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


class Records:
    """The run folder's own records. ``enabled=False`` (ranks other than 0) reads but never writes."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.dir, self.enabled = run_dir, enabled
        self.samples_dir = run_dir / "samples"
        self.summary_path = run_dir / "summary.json"
        self.summary = read_json(self.summary_path) or {}

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({STEP: step, "time": round(time.time(), 3), **{k: _finite(v) for k, v in metrics.items()}}) + "\n")

    def samples(self, rows: list[dict], step: int) -> Path | None:
        if not self.enabled:
            return None
        images = self.samples_dir / "images"
        images.mkdir(parents=True, exist_ok=True)
        lines = []
        for r in rows:
            path = images / f"{r['id'].replace('/', '_')}.png"
            if not path.exists():  # the same test image at every step
                r["image"].convert("RGB").save(path)
            lines.append(json.dumps({k: v for k, v in r.items() if k != "image"} | {"image": str(path.relative_to(self.dir)), "step": step}))
        out = self.samples_dir / f"step-{step:06d}.jsonl"
        out.write_text("\n".join(lines) + "\n")
        return out

    def predictions(self, rows: list[dict], step: int) -> Path | None:
        """Every test prediction of one evaluation, with the labels it is judged against."""
        if not self.enabled:
            return None
        out = self.dir / "predictions" / f"step-{step:06d}.jsonl"
        out.parent.mkdir(exist_ok=True)
        out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return out

    def update(self, **fields) -> None:
        self.summary.update(fields)
        if self.enabled:
            write_json(self.summary_path, self.summary)


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

    def samples(self, rows: list[dict], step: int) -> None:
        if not self.run:
            return
        columns = ["step", "id", "image", "prompt", "truth", "prediction", "correct"]
        table = self.wandb.Table(columns=columns)
        for r in rows:
            table.add_data(step, r["id"], self.wandb.Image(r["image"]), r["prompt"], r["truth"], r["prediction"], r["correct"])
        self.run.log({"eval/predictions": table, STEP: step})

    def summary(self, fields: dict) -> None:
        if self.run:
            for k, v in fields.items():
                self.run.summary[k] = v

    def finish(self, status: str) -> None:
        if self.run:
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None
