"""Faults as they happen: signals, a rerun with another config, damaged checkpoints, two commands on
one folder. Real processes throughout (``python -m vlmqc.train``, SIGTERM, kill -9)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_app

from vlmqc.compare.load import load_trial
from vlmqc.compare.notes import Notes
from vlmqc.runs.lock import RunFolderLocked, RunLock, status_of

FAST = [
    "data.train_size=32",
    "data.test_size=4",
    "trainer.batch_size=2",
    "trainer.logging_steps=1",
    "trainer.eval_every=0",
    "trainer.samples=0",
    "trainer.eval_before=false",
    "trainer.eval_batch_size=4",
]


def start(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    return run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={run_dir}", *FAST, *overrides, wait=False)


def trial(tmp_path: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={run_dir}", *FAST, *overrides)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def loss_steps(run_dir: Path) -> list[int]:
    rows = (
        [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if (run_dir / "metrics.jsonl").exists()
        else []
    )
    return [r["trainer/global_step"] for r in rows if "train/loss" in r]


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in loss_steps(run_dir)):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the trial never reached the step"
        time.sleep(0.1)


def leet_summary(run_dir: Path) -> dict:
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", "--summary", str(wandb_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.slow  # a real trial signalled during an evaluation of 300 rows
def test_sigterm_during_an_evaluation_stops_between_its_batches_and_records_none_of_it(tmp_path):
    run_dir = tmp_path / "run"
    evaluating = [
        "data.test_size=300",
        "trainer.eval_every=2",
        "trainer.eval_batch_size=4",
        "trainer.samples=4",
        "trainer.max_steps=40",
        "trainer.save_steps=100",
        "logger=none",
    ]
    proc = start(tmp_path, run_dir, *evaluating)
    wait_for_step(proc, run_dir, 2)  # step 2's loss is logged, then its evaluation starts
    time.sleep(1.0)  # into the evaluation: the Trainer's loss pass, then generation
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    waited = time.monotonic() - signalled
    assert proc.returncode == 1, out[-3000:]
    # the whole evaluation takes 40 s and more on 2 cores (300 rows); one batch of 4, a second or two
    assert waited < 20, f"{waited:.0f} s from SIGTERM to the end: the evaluation was not stopped between batches"
    stopped = re.search(r"SIGTERM: stopped after (\d+) of 300 rows", out)
    assert stopped and int(stopped[1]) < 300, out[-3000:]
    record = summary(run_dir)
    assert record["status"] == "interrupted" and record["step"] == 2 and "SIGTERM" in record["reason"]
    assert (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file(), "this step's checkpoint"
    assert loss_steps(run_dir) == [1, 2], "no step after the signal"
    # the part of the evaluation is recorded nowhere: no predictions, no scores, no final
    assert not (run_dir / "predictions" / "step-000002.jsonl").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "eval/exact_match" in r]
    assert record.get("final") is None


@pytest.mark.slow  # four trials of 40 steps in real processes, one signalled
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
    changed = trial(
        tmp_path, run_dir, "trainer.max_steps=41", "trainer.save_steps=2", "trainer.save_total_limit=2", "logger=none"
    )
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert "trainer.max_steps: 40 -> 41" in changed.stderr and "40 -> 41" not in changed.stdout  # refusals: stderr
    assert (run_dir / "summary.json").read_bytes() == before

    # the newest checkpoint half-written (a full disk): the rerun resumes from the one before it,
    # and the records after that one's step are dropped, so the curve does not double back
    newest = run_dir / "checkpoints" / f"checkpoint-{stopped}" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (older,) = [p for p in (run_dir / "checkpoints").iterdir() if p.name != f"checkpoint-{stopped}"]
    resumed = trial(
        tmp_path, run_dir, "trainer.max_steps=40", "trainer.save_steps=2", "trainer.save_total_limit=2"
    )  # logger is not part of the config hash
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


@pytest.mark.slow  # two trials side by side
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
from vlmqc.runs.lock import RunLock
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


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: a real disk that fills up (mounting needs root; skipped where not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_leaves_a_resumable_trial(tmp_path, small_disk):
    """The disk fills while the trial writes checkpoints: it stops, every record it had stays
    readable (atomic writes), and once there is room the same command resumes from a complete
    checkpoint, passing over the one the full disk cut short."""
    run_dir = small_disk / "run"
    args = ("trainer.max_steps=30", "trainer.save_steps=2", "trainer.save_total_limit=3", "logger=none")
    proc = start(tmp_path, run_dir, *args)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    # all but a few KiB taken: the next checkpoint (hundreds of KiB) cannot be written whole
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    try:
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 24 * 1024))
    except OSError as e:  # the trial wrote in between and the filler did not fit: the disk is full all the same
        if e.errno != errno.ENOSPC:
            raise
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out[-3000:]
    assert "No space left on device" in out
    # the record stays readable, and never says running for a process that is gone: its end was
    # written (failed), or the disk would not take it and every reader shows died
    recorded = json.loads((run_dir / "summary.json").read_text())["status"]
    assert recorded in ("running", "failed") and status_of(run_dir, recorded) in ("failed", "died")
    assert load_trial(run_dir, Notes()).status in ("failed", "died")
    # the trial's own failure is logged once (with its traceback where the record took it); a
    # record write that fails on the full disk is one line, never a traceback of its own
    assert out.count("Traceback (most recent call last)") <= 1, out[-3000:]
    if recorded == "running":
        assert "could not be written" in out and "Traceback" not in out, out[-3000:]

    filler.unlink()
    resumed = trial(tmp_path, run_dir, *args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    done = summary(run_dir)
    assert done["status"] == "completed" and done["step"] == 30
    # resumed from a checkpoint the disk held whole (rotated away since, by save_total_limit)
    assert done["resumed_from"] is not None and Path(done["resumed_from"]).name.startswith("checkpoint-")
    for skipped in done["skipped_checkpoints"]:  # what the full disk cut short, set aside
        assert (
            Path(skipped["moved_to"]).name.startswith("damaged-checkpoint-")
            and skipped["checkpoint"] != done["resumed_from"]
        )
    assert loss_steps(run_dir) == list(range(1, 31)), "every step logged once, in order"


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_rather_than_moving_to_the_next_trial(tmp_path):
    proc = run_app(
        tmp_path,
        "vlmqc.train",
        "-m",
        *FAST,
        "trainer.max_steps=400",
        "trainer.save_steps=1000",
        "logger=none",
        "trainer.seed=1,2",
        wait=False,
    )
    deadline = time.monotonic() + 300
    while not (found := list(tmp_path.glob("outputs/multirun/*/*/metrics.jsonl"))) or not loss_steps(found[0].parent):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the first trial never logged a step"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out[-3000:]
    trials = [p.parent for p in tmp_path.glob("outputs/multirun/*/*/summary.json")]
    assert len(trials) == 1, f"the sweep went on to another trial: {trials}"
    first = summary(trials[0])
    assert first["status"] == "interrupted" and "SIGINT" in first["reason"]
    assert "trainer.seed=2" not in out.split("sweep stopped")[-1]


@pytest.mark.slow
def test_a_rank_that_fails_keeps_its_own_reason_in_the_record(tmp_path):
    """Two gloo ranks whose checkpoint has no processor: each rank fails loading it, rank 0
    records why, and the launcher's "a worker process failed" does not overwrite that."""
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llava"}))
    run_dir = tmp_path / "run"
    out = trial(tmp_path, run_dir, f"model.path={broken}", "trainer.devices=2", "trainer.device=cpu", "logger=none")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    record = summary(run_dir)
    assert record["status"] == "failed"
    assert not record["reason"].startswith("a worker process failed"), record["reason"]
    assert str(broken) in record["reason"] or "processor" in record["reason"].lower(), record["reason"]
    assert record["traceback"], "the rank's traceback is kept"


def test_a_running_record_whose_process_is_gone_reads_as_died_everywhere(tmp_path, capsys):
    """A trial killed (or whose last write a full disk refused) leaves ``running`` in its record:
    the report, the inspector (predict, serve) and a sweep's end derive ``died`` from its free lock."""
    from omegaconf import OmegaConf

    from vlmqc.inspector import CompletedRun, InspectorError
    from vlmqc.runs.sweep import SweepSummary

    run_dir = tmp_path / "sweep" / "trial-0"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")  # a trial Hydra started
    (run_dir / "summary.json").write_text(json.dumps({"schema_version": 2, "status": "running", "run_name": "t"}))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert status_of(run_dir, "running") == "running" and load_trial(run_dir, Notes()).status == "running"
    holder.kill()
    holder.wait()
    assert status_of(run_dir, "running") == "died" and status_of(run_dir, "failed") == "failed"
    trial = load_trial(run_dir, Notes())
    assert trial.status == "died" and "full disk" in trial.reason
    with pytest.raises(InspectorError, match="status 'died'"):
        CompletedRun.read(run_dir)
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    assert "died        trial-0" in capsys.readouterr().out
