"""Faults as they happen: signals, a rerun with another config, damaged checkpoints, two commands on
one folder. Real processes throughout (``python -m vlmqc.train``, SIGTERM, kill -9)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmqc.lock import RunFolderLocked, RunLock

FAST = ["data.train_size=32", "data.test_size=4", "trainer.batch_size=2", "trainer.logging_steps=1", "trainer.eval_every=0", "trainer.samples=0",
        "trainer.eval_before=false", "trainer.eval_batch_size=4"]


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "vlmqc.train", f"hydra.run.dir={run_dir}", *FAST, *overrides]


def env_for(tmp_path: Path) -> dict:
    env = {**os.environ, "VLMQC_CACHE_DIR": str(tmp_path / "cache"), "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    return env


def start(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(command(run_dir, *overrides), env=env_for(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trial(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(run_dir, *overrides), env=env_for(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def loss_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] if (run_dir / "metrics.jsonl").exists() else []
    return [r["trainer/global_step"] for r in rows if "train/loss" in r]


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in loss_steps(run_dir)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the trial never reached the step"
        time.sleep(0.1)


def leet_summary(run_dir: Path) -> dict:
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run(["wandb", "leet", "inspect", "--json", "--summary", str(wandb_run)], capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def test_sigterm_checkpoints_a_rerun_with_another_config_is_refused_a_damaged_checkpoint_is_skipped(tmp_path):
    run_dir = tmp_path / "run"
    long = ["trainer.max_steps=40", "trainer.save_steps=2", "trainer.save_total_limit=2"]
    proc = start(tmp_path, run_dir, *long)
    wait_for_step(proc, run_dir, 3)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out[-3000:]

    # stopped at a step end, with a checkpoint of that step, and said so everywhere
    first = summary(run_dir)
    stopped = first["step"]
    assert first["status"] == "interrupted" and stopped >= 3
    assert "SIGTERM" in first["reason"] and f"step {stopped}" in first["reason"]
    assert (run_dir / "checkpoints" / f"checkpoint-{stopped}" / "trainer_state.json").is_file()
    assert max(loss_steps(run_dir)) <= stopped + 1
    wandb = leet_summary(run_dir)
    assert wandb["exit_code"] == 1 and wandb["summary"]["status"] == "interrupted"

    # the same folder with another config: refused before anything is written, naming the key
    before = (run_dir / "summary.json").read_bytes()
    changed = trial(tmp_path, run_dir, "trainer.max_steps=41", "trainer.save_steps=2", "trainer.save_total_limit=2", "logger=none")
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert "trainer.max_steps: 40 -> 41" in changed.stdout + changed.stderr
    assert (run_dir / "summary.json").read_bytes() == before

    # the newest checkpoint half-written (a full disk): the rerun resumes from the one before it,
    # and the records after that one's step are dropped, so the curve does not double back
    newest = run_dir / "checkpoints" / f"checkpoint-{stopped}" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (older,) = [p for p in (run_dir / "checkpoints").iterdir() if p.name != f"checkpoint-{stopped}"]
    resumed = trial(tmp_path, run_dir, "trainer.max_steps=40", "trainer.save_steps=2", "trainer.save_total_limit=2")  # logger is not part of the config hash
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    second = summary(run_dir)
    assert second["status"] == "completed" and second["resumed_from"] == str(older)
    assert [s["checkpoint"] for s in second["skipped_checkpoints"]] == [str(newest.parent)]
    assert "adapter_model.safetensors" in second["skipped_checkpoints"][0]["reason"]
    assert f"skipping checkpoint {newest.parent}" in resumed.stdout + resumed.stderr
    steps = loss_steps(run_dir)
    assert steps == list(range(1, 41)), "every step logged once, in order"
    assert second["wandb"]["id"] == first["wandb"]["id"]

    # trainer.resume=false: a new attempt; the old one's records move to attempts/1
    again = trial(tmp_path, run_dir, "trainer.max_steps=4", "trainer.resume=false", "logger=none")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    third = summary(run_dir)
    assert third["status"] == "completed" and third["attempts"] == 1 and third["earlier_attempts"] == ["1"]
    assert loss_steps(run_dir) == [1, 2, 3, 4]
    kept = run_dir / "attempts" / "1"
    assert json.loads((kept / "summary.json").read_text())["step"] == 40 and loss_steps(kept) == list(range(1, 41))
    assert (kept / "wandb").is_dir() and (kept / "adapter").is_dir()


def test_the_same_command_twice_at_once_makes_one_run(tmp_path):
    run_dir = tmp_path / "run"
    args = ("trainer.max_steps=6", "trainer.save_steps=100")
    procs = [start(tmp_path, run_dir, *args), start(tmp_path, run_dir, *args)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs[0][-2000:] + outs[1][-2000:]
    loser = outs[[p.returncode for p in procs].index(2)]
    winner = procs[[p.returncode for p in procs].index(0)]
    assert f"pid {winner.pid} on {socket.gethostname()}" in loser
    assert loss_steps(run_dir) == [1, 2, 3, 4, 5, 6], "one metrics.jsonl stream"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, "one W&B run"
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["attempts"] == 1


HOLDER = """
import sys, time
from pathlib import Path
from vlmqc.lock import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()  # referenced: a collected lock object closes its file
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_taken_over_and_a_live_one_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderLocked, match=f"pid {holder.pid} on {socket.gethostname()}"):
        RunLock(tmp_path).acquire()
    holder.kill()  # kill -9: no chance to clean up
    holder.wait()
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over["pid"] == holder.pid
    lock.release()
    assert RunLock(tmp_path).acquire().took_over is None, "a lock released normally is not stale"
