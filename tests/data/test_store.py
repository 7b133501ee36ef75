"""The build's worker processes: safe to start from a process with busy threads, and a worker
killed mid-build fails the build at once, leaving nothing in the cache."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from vlmqc.data import store

# tasks are (index, pid file or None): a worker that draws the victim task records its pid and waits
SPLITS = {"train": list(range(6)), "test": list(range(6, 8))}


def tiny_row(i: int) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i, 0, 0)).save(buf, format="PNG")
    return {
        "id": str(i),
        "task": "custom",
        "image": {"bytes": buf.getvalue(), "path": None},
        "source_image": None,
        "verdict": "pass",
        "defects": [],
        "target": "",
        "shape": "",
        "answer": "",
        "meta": "{}",
    }


def rows_waiting_to_be_killed(task):
    """Workers import this module by name; the task holding a pid file is the one to kill."""
    i, pid_file = task
    if pid_file is not None:
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(120)  # killed long before this ends
    yield tiny_row(i)


@pytest.mark.slow  # a worker pool started and one of its workers killed
def test_a_worker_killed_mid_build_fails_the_build_at_once_and_caches_nothing(tmp_path):
    cache = tmp_path / "cache"
    final = cache / "victim-0123456789abcdef"
    pid_file = tmp_path / "worker.pid"
    splits = {split: [(i, str(pid_file) if i == 3 else None) for i in tasks] for split, tasks in SPLITS.items()}

    def oom_killer():
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "no worker reached the victim task"
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=oom_killer, daemon=True)
    killer.start()
    start = time.monotonic()
    with pytest.raises(store.WorkerDied, match="'victim'.*worker process died"):
        store.build(
            final, splits, rows_waiting_to_be_killed, {"name": "victim", "examples": 8}, num_workers=2, progress=False
        )
    killer.join(timeout=5)
    assert time.monotonic() - start < 60  # not the victim's 120 s sleep, nor forever
    assert not final.exists()
    assert list(cache.iterdir()) == []  # the temporary folder went too


LOCKED_BUILD = """
import sys, threading, time
from pathlib import Path

sys.path.insert(0, {tests!r})
from test_store import tiny_row
from vlmqc.data import store

LOCK = threading.Lock()  # stands for any lock a worker's code takes: allocator, stdio, a library's cache


def rows(task):
    with LOCK:  # in a forked child this is the parent's lock, held forever by a thread that is not there
        pass
    yield tiny_row(task)


if __name__ == "__main__":
    done = threading.Event()

    def busy():
        while not done.is_set():
            with LOCK:
                done.wait(0.5)  # the lock is held nearly all the time, as by a logging or upload thread
            time.sleep(0.0001)

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    dsd = store.build(Path(sys.argv[1]), {splits!r}, rows, {{"name": "locked", "examples": 8}}, num_workers=2,
        progress=False)
    done.set()
    print(sorted(int(i) for split in dsd.values() for i in split["id"]))
"""


def test_a_build_started_beside_threads_holding_locks_completes(tmp_path):
    script = tmp_path / "locked_build.py"
    script.write_text(LOCKED_BUILD.format(tests=str(Path(__file__).parent), splits=SPLITS))
    # its own session: if the build hangs, the script and its workers are killed as one group
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "cache" / "locked-0")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the build hung: a worker inherited a lock held by one of the parent's threads")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.split("\n")[-2] == str(list(range(8)))


THREADS_BUILD = """
import json, sys

import torch  # the caller has torch, as a training process does: the forkserver imports it once

sys.path.insert(0, {tests!r})
from test_store import tiny_row
from vlmqc.data import store


def rows(task):
    import os

    import torch

    row = tiny_row(task)
    row["meta"] = json.dumps({{"threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}})
    yield row


if __name__ == "__main__":
    dsd = store.build(store.Path(sys.argv[1]), {splits!r}, rows, {{"name": "threads", "examples": 8}}, num_workers=2,
        progress=False)
    print(json.dumps(sorted({{m for split in dsd.values() for m in split["meta"]}})))
"""


@pytest.mark.slow  # a process that imports torch and starts a worker pool
def test_build_workers_run_one_thread_each_and_warn_nothing(tmp_path):
    """16 workers with torch's default of one thread per core ran 256 threads on 16 cores (issue 21):
    each worker must run one. Started as ``python -m pkg.module``, as ``python -m vlmqc.train`` is,
    whose re-run in every worker printed runpy's "found in sys.modules" warning once per worker."""
    pkg = tmp_path / "threadpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "build.py").write_text(THREADS_BUILD.format(tests=str(Path(__file__).parent), splits=SPLITS))
    env = {
        k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")
    }  # torch's default: one thread per core
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "threadpkg.build", str(tmp_path / "cache" / "threads-0")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(m) for m in json.loads(proc.stdout.strip().splitlines()[-1])]
    assert seen == [{"threads": 1, "omp": "1"}]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
