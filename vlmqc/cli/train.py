"""``vlmqc train``: one trial, or a sweep of them with ``-m`` (a Hydra app: overrides, ``-m``,
``--cfg job``, ``--help`` all work as Hydra's).

    vlmqc train experiment=first_run
    vlmqc train data=pair_round prompt=short lora=r16 image_size=448
    vlmqc train -m experiment=scratch_raw_vs_diff hydra/launcher=gpus_local

Every config of the command line (each trial of a sweep) is composed and validated before the
first starts (vlmqc/preflight.py): a config error exits 2 with one line naming the key. Then each
trial: the run folder's lock, the folder readied for a fresh start or a resume (a changed config
refused, exit 2), the trial (vlmqc/training/trial.py) in this process, or in DDP ranks started here
(vlmqc/training/launch.py). Exit status: 0 completed, 1 failed or interrupted (the reason is in
summary.json), 2 a config error. In a sweep a failed trial does not stop the others; the sweep's
end lists them and exits 1 (vlmqc/runs/sweep.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vlmqc import console
from vlmqc.config import ConfigError
from vlmqc.data.custom import CustomDataError
from vlmqc.preflight import run_checked, validate
from vlmqc.runs import resume
from vlmqc.runs.lock import RunLock
from vlmqc.runs.writer import Records
from vlmqc.training import gpus
from vlmqc.training.launch import launch
from vlmqc.training.trial import run

log = logging.getLogger(__name__)


def sweep_context() -> dict:
    """The command line's overrides, and the sweep this trial belongs to (None outside a multirun)."""
    if not HydraConfig.initialized():
        return {"overrides": [], "sweep": None}
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra")]
    sweep = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return {"overrides": overrides, "sweep": sweep}


def trial(cfg: DictConfig, objs: dict, run_dir: Path) -> str:
    """One trial, in this process or in the DDP ranks it starts; returns its status."""
    t = objs["trainer"]
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and t.device != "cpu" and gpus.visible():
        gpus.claim(t.devices)  # parallel trials on one machine: each its own GPUs (vlmqc/training/gpus.py)
    # under torchrun (LOCAL_RANK set) this process already is one rank; else start the ranks here
    if (t.devices > 1 or t.nodes > 1 or t.elastic) and "LOCAL_RANK" not in os.environ:
        return launch(cfg, objs, run_dir, sweep_context())  # which holds the run folder's lock
    rank0 = os.environ.get("RANK", "0") == "0"
    # one writer per run folder (vlmqc/runs/lock.py); under torchrun, the global rank 0 for all ranks
    with RunLock(run_dir) if rank0 else contextlib.nullcontext():
        plan = resume.prepare(cfg, run_dir, write=rank0)  # refuses a changed config before any write
        if resume.already_completed(cfg, run_dir):
            return "completed"
        return run(cfg, objs, run_dir, sweep_context(), plan)


def objective(run_dir: Path, metric: str) -> float:
    """The value a metric-driven sweeper (Optuna) optimises: the trial's final ``metric``;
    NaN for a trial that failed, which Optuna records as a failed trial."""
    summary = Records(run_dir).summary
    if summary.get("status") != "completed":
        return float("nan")
    return float((summary.get("final") or {}).get(metric, float("nan")))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        objs = validate(cfg)  # once in this process, before a GPU is claimed or the run folder is touched
        console.setup(cfg.quiet)
        status = trial(cfg, objs, run_dir)
    except (ConfigError, CustomDataError) as e:
        print(f"config error: {e}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        status = "failed"
    if multirun and status == "interrupted":
        # a signal stops the sweep, not just this trial: Hydra's launcher would go on to the next one
        log.error("sweep stopped: trial %s was interrupted", cfg.run_name)
        raise SystemExit(1)
    if multirun:  # a failed trial must not stop the sweep: the sweep's end reports it
        return objective(run_dir, cfg.sweep_metric)
    if status != "completed":
        sys.exit(1)
    return None


def cli(argv: list[str] | None = None) -> None:
    """``vlmqc train``: a config error exits 2 naming the key, before any trial starts."""
    run_checked("train", main, argv)
