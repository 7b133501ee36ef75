"""One trial on several GPUs (DDP), on one node or several: the ranks started by PyTorch's elastic
launcher, each running ``vlmqc.training.trial.run``.

    vlmqc train trainer.devices=4                                        # 4 GPUs of this machine
    vlmqc train -m trainer.nodes=2 trainer.devices=8 hydra/launcher=slurm_multinode

This process holds the run folder's lock (on the first node) and readies the folder before any
rank starts, so a changed config exits 2 here; the dataset and a random model are prepared here
first, so that the ranks only load them. Under ``torchrun`` each process already is a rank and
this module is not used (vlmqc/cli/train.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from vlmqc import console
from vlmqc.config import CONF_DIR, ConfigError, register
from vlmqc.data import get_dataset
from vlmqc.devices import pick_device
from vlmqc.models import random_checkpoint
from vlmqc.preflight import validate
from vlmqc.runs import resume
from vlmqc.runs.lock import RunLock
from vlmqc.runs.writer import Records
from vlmqc.training.trial import run

log = logging.getLogger(__name__)


def _worker(overrides: list[str], run_dir: str, run_name: str, context: dict, plan: resume.Plan) -> str:
    """One rank of a multi-GPU trial, in a process started by torch's elastic launcher.

    The config is composed again from the same overrides with Hydra's compose API and validated
    in this process, so every schema applies as in the parent; the run folder and name are the
    parent's (one folder for all ranks), and so are its Hydra context and plan: workers have none.
    """
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=overrides)
    cfg.paths.output_dir, cfg.run_name = run_dir, run_name
    objs = validate(cfg)
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][rank " + os.environ.get("RANK", "?") + "][%(name)s][%(levelname)s] - %(message)s",
    )
    console.setup(cfg.quiet)
    return run(cfg, objs, Path(run_dir), context, plan)


def rendezvous(t) -> tuple[int, str, str, bool]:
    """(nodes, rendezvous endpoint, run id, whether this is the first node) for the elastic launcher.

    One node: a free local port, as ``torchrun --standalone``. Several: this process is one task
    per node of a Slurm job started by Hydra's submitit launcher; submitit's job environment names
    the nodes, and the first one hosts the c10d rendezvous.
    """
    if t.nodes == 1:
        return 1, "localhost:0", f"vlmqc-{os.getpid()}-{int(time.time())}", True
    import submitit

    try:
        job = submitit.JobEnvironment()
    except RuntimeError as e:
        raise ConfigError(
            f"trainer.nodes={t.nodes}: a multi-node trial runs as one task per node of a Slurm job "
            f"(hydra/launcher=slurm_multinode); {e}"
        ) from e
    if job.num_nodes != t.nodes or job.num_tasks != t.nodes:
        raise ConfigError(
            f"trainer.nodes={t.nodes}: this Slurm job has {job.num_nodes} node(s) and {job.num_tasks} task(s); it "
            f"needs one task on each of {t.nodes} nodes "
            "(hydra.launcher.nodes and tasks_per_node=1; hydra/launcher=slurm_multinode sets them from trainer.nodes)"
        )
    return t.nodes, f"{job.hostnames[0]}:{t.rdzv_port}", f"vlmqc-{job.job_id}", job.node == 0


def launch(cfg: DictConfig, objs: dict, run_dir: Path, context: dict) -> str:
    """Run the trial on ``devices`` processes (DDP) per node with PyTorch's elastic launcher.

    This process holds the run folder's lock (on the first node) and readies the folder
    (vlmqc/resume.py) before any rank starts, so a changed config exits 2 here. The dataset and a
    random model (tiny or not) are prepared here first, so that the workers only load them.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    devices = objs["trainer"].devices
    nodes, endpoint, run_id, first_node = rendezvous(objs["trainer"])
    with RunLock(run_dir) if first_node else contextlib.nullcontext():
        plan = resume.prepare(cfg, run_dir, write=first_node)
        if resume.already_completed(cfg, run_dir):
            return "completed"
        records = Records(run_dir, enabled=first_node)
        get_dataset(objs["data"], cfg.paths.cache_dir, num_workers=cfg.num_workers)
        if objs["model"].path is None:
            random_checkpoint(objs["model"], objs["image_size"].size, cfg.paths.models_dir)
        if pick_device(objs["trainer"].device) == "cuda" and torch.cuda.device_count() < devices:
            raise ConfigError(f"trainer.devices={devices}: only {torch.cuda.device_count()} GPU(s) are visible")
        # each rank gets its share of the CPU cores for its threads (torchrun sets 1): several ranks
        # each running a thread per core oversubscribe the CPU, and the collators' work slows down
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
        config = LaunchConfig(
            min_nodes=nodes,
            max_nodes=nodes,
            nproc_per_node=devices,
            run_id=run_id,
            rdzv_backend="c10d",
            rdzv_endpoint=endpoint,
            max_restarts=0,
            monitor_interval=1,
            start_method="spawn",
        )
        # this attempt's status and reason start empty: what the ranks write below is theirs, not an earlier attempt's
        records.update(status="running", reason=None)
        try:
            results = elastic_launch(config, _worker)(context["overrides"], str(run_dir), cfg.run_name, context, plan)
        except SignalException as e:
            # the launcher passed the signal on to the ranks, which stop at a step end and record it
            # (vlmqc/signals.py); it kills those that take longer than its shutdown timeout
            return _launch_ended(
                records,
                "interrupted",
                f"interrupted by {e.sigval.name} (the launcher's); the ranks did not record stopping",
            )
        except Exception as e:  # a rank failed: its own reason, when it wrote one, stays in the record
            return _launch_ended(records, "failed", f"a worker process failed: {_first_failure(e)}")
    # the global ranks' results; on a later node, rank 0's is not among them, but its own are the same
    return results.get(0, next(iter(results.values())))


def _first_failure(e: Exception) -> str:
    """The first failed rank's own exception, as torch's elastic launcher recorded it."""
    try:
        rank, failure = e.get_first_failure()  # ChildFailedError
        message = (
            failure.message.get("message", failure.message) if isinstance(failure.message, dict) else failure.message
        )
        return f"rank {rank}: {str(message)[:2000]}"
    except AttributeError:
        return f"{type(e).__name__}: {str(e)[:2000]}"


def _launch_ended(records: Records, status: str, reason: str) -> str:
    """The launcher's account of a trial whose ranks ended abnormally, unless rank 0 wrote its own."""
    fresh = Records(records.dir, enabled=records.enabled)  # what the ranks wrote, not this process's copy from before
    if fresh.summary.get("status") in ("failed", "interrupted") and fresh.summary.get("reason"):
        return fresh.summary["status"]
    fresh.update(status=status, reason=reason)
    return status
