"""GPUs of one machine shared by parallel trials: each trial claims its own, or waits.

Hydra's submitit local launcher starts every trial of a sweep at once and gives each the same
``CUDA_VISIBLE_DEVICES`` (submitit's local executor numbers GPUs from 0 for every job), so
trials would pile onto the first GPUs. Neither library assigns GPUs to jobs, hence this: a trial
started by that launcher takes ``trainer.devices`` of the GPUs it can see by locking one file per
GPU, narrows ``CUDA_VISIBLE_DEVICES`` to them before CUDA starts, and holds the locks until its
process ends (the kernel drops them even when it crashes). A trial that finds too few free GPUs
waits for another to finish. The locks live in one folder per machine, so two sweeps started side
by side share the GPUs too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

from vlmqc.config import ConfigError

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "VLMQC_GPU_LOCKS"
_held: list = []  # open lock files, held until the process ends, which frees the GPUs


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"vlmqc-gpu-locks-{os.getuid()}")


def visible() -> list[str] | None:
    """The GPUs this process may use, by ``CUDA_VISIBLE_DEVICES``; None when it is not set."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [g.strip() for g in value.split(",") if g.strip()]


def claim(n: int, poll_seconds: float = 2.0) -> list[str]:
    """Lock ``n`` of the visible GPUs, waiting while fewer are free; set ``CUDA_VISIBLE_DEVICES``
    to them and return them. Must run before anything in this process starts CUDA."""
    gpus = visible()
    if gpus is None:
        raise RuntimeError("CUDA_VISIBLE_DEVICES is not set: there is no GPU list to claim from")
    if n > len(gpus):
        raise ConfigError(
            f"trainer.devices={n}: only {len(gpus)} GPU(s) are visible to this trial ({','.join(gpus) or 'none'})"
        )
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    started, waited = time.monotonic(), False
    while True:
        got = []
        for gpu in gpus:
            f = open(folder / f"gpu-{gpu}.lock", "a+")  # noqa: SIM115 - held open for the life of the process
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            got.append((gpu, f))
            if len(got) == n:
                break
        if len(got) == n:
            _held.extend(f for _, f in got)
            claimed = [g for g, _ in got]
            for _, f in got:  # who holds it, for a person looking at the folder
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()}\n")
                f.flush()
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(claimed)
            log.info(
                "claimed GPU(s) %s%s",
                ",".join(claimed),
                f" after waiting {time.monotonic() - started:.0f} s" if waited else "",
            )
            return claimed
        for _, f in got:
            f.close()  # all or nothing: holding some while waiting for more could deadlock two trials
        if not waited:
            log.info("waiting for %d free GPU(s) among %s (locks in %s)", n, ",".join(gpus), folder)
            waited = True
        time.sleep(poll_seconds)


def distributed_backend() -> str | None:
    """The process group's backend (nccl, gloo), or None outside a distributed run.

    Here rather than in vlmqc/train.py: Hydra's submitit launcher pickles the train app's functions
    by value (it runs as ``__main__``), and cloudpickle would then try to take ``torch.distributed``'s
    config module along with them, which cannot be pickled.
    """
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None
