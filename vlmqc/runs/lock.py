"""One writer per run folder: the process that runs a trial holds ``<run folder>/run.lock``.

Two commands on the same folder (the same command started twice, a rerun while the first is still
going) would interleave two ``metrics.jsonl`` streams, two W&B runs and two sets of checkpoints.
The lock is the kernel's (``flock`` on the file, as vlmqc/gpus.py does for GPUs): taken before
the trial writes anything, dropped by the kernel when the holder ends, however it ends (kill -9
included), so a lock can never outlive its process on this host. The file's content (pid, host,
start time) is for the message a second process prints, and for a person looking at the folder;
a holder that ends normally empties it, so a non-empty file whose lock is free was left by a
process that died, and taking it over says so.

Who takes it: the process started by the command, i.e. the parent of the elastic launcher's
ranks (they run inside its lock), or, under torchrun, the global rank 0 alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from vlmqc.config import ConfigError

log = logging.getLogger(__name__)
NAME = "run.lock"


class RunFolderLocked(ConfigError):
    """Another process is running a trial in this folder (exit status 2, as for a bad command)."""


class RunLock:
    """``with RunLock(run_dir):`` holds the folder for the block; raises RunFolderLocked if held."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / NAME
        self.file = None
        self.took_over: dict | None = None  # the holder a dead process left in the file, if any

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open while the trial runs; "a+" never truncates a holder's file
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
                if holder
                else "another process"
            )
            raise RunFolderLocked(
                f"{self.path.parent} is in use by {who} (lock file {self.path}); wait for it to end, or pick "
                f"another folder"
            ) from None
        f.seek(0)
        left = _parse(f.read())
        if left:
            self.took_over = left
            log.warning(
                "taking over %s: its holder (pid %s on %s, since %s) is gone",
                self.path,
                left.get("pid"),
                left.get("host"),
                left.get("started"),
            )
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            )
            + "\n"
        )
        f.flush()
        self.file = f
        return self

    def release(self) -> None:
        if self.file is None:
            return
        self.file.truncate(0)  # an empty file: released on purpose, nothing to warn about next time
        self.file.close()  # closing drops the flock
        self.file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(text: str) -> dict | None:
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "started": f"unreadable lock content {text[:80]!r}"}


def holder_alive(run_dir: Path) -> bool:
    """Whether a process holds the run folder's lock now: probed with a shared lock, taken and
    dropped at once, so nothing is written; no lock file means no holder."""
    try:
        f = open(Path(run_dir) / NAME)  # noqa: SIM115 - closed below
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


DIED = "died"
DIED_REASON = (
    "the process ended without recording its end: killed (kill -9, out of memory) or its last write failed (a full "
    "disk); the same command resumes it from its last checkpoint"
)


def status_of(run_dir: Path, status: str | None) -> str | None:
    """A record's status as every reader must show it: ``running`` while no process holds the
    folder's lock is ``died`` (the kernel drops the lock when its holder ends, however it ends,
    while a record a full disk would not take keeps saying ``running``)."""
    return DIED if status == "running" and not holder_alive(run_dir) else status
