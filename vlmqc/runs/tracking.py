"""Weights & Biases: a trial's stream of metrics, samples and summary, as its run folder has them.

The run folder's own records are written by ``vlmqc.runs.records.Records`` (and described there). W&B
runs offline by default (``logger.mode=offline``): the real library writes a run folder that
``wandb sync`` can upload later. Only the main process (rank 0) creates any of this.
"""

from __future__ import annotations

from pathlib import Path

STEP = "trainer/global_step"  # every metric's x axis in W&B


class Tracker:
    """W&B, or nothing. Errors inside W&B never take a trial down with them."""

    def __init__(
        self,
        logger_cfg,
        run_dir: Path,
        run_name: str,
        config: dict,
        resume_id: str | None,
        group: str | None = None,
        tags: list[str] = (),
        enabled: bool = True,
    ):
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
