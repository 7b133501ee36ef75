"""Multi-process trials on the CPU: 2 ranks with gloo against 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_app

from vlmqc.config import TrainerConfig

# dropout off: the two runs must see the same arithmetic, not the same distribution
COMMON = [
    "lora.dropout=0",
    "data.train_size=16",
    "data.test_size=10",
    "trainer.max_steps=4",
    "trainer.logging_steps=1",
    "trainer.samples=2",
    "trainer.eval_batch_size=4",
    "trainer.eval_every=2",
]
TOLERANCE = 1e-4  # relative, on every logged training loss: float sums in another order across ranks


def train(
    tmp_path: Path, name: str, *overrides: str, launcher: list[str] | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path / name
    return run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={run_dir}", *COMMON, *overrides, launcher=launcher), run_dir


def logged(run_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["trainer/global_step"] for r in rows if key in r]
    assert len(steps) == len(set(steps)), f"{key} logged twice for a step: more than one rank wrote"
    return {r["trainer/global_step"]: r[key] for r in rows if key in r}


def predictions(run_dir: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions" / f"step-{step:06d}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same trial on one process (batch 4) and on two gloo ranks (batch 2 each)."""
    tmp = tmp_path_factory.mktemp("ddp")
    single, single_dir = train(tmp, "single", "trainer.batch_size=4")
    assert single.returncode == 0, single.stderr[-3000:]
    double, double_dir = train(tmp, "double", "trainer.batch_size=2", "trainer.devices=2")
    assert double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    return single_dir, double_dir


@pytest.mark.slow  # the pair fixture: a trial on one process and one on two ranks
def test_two_ranks_train_like_one_process_with_the_same_global_batch(pair):
    single_dir, double_dir = pair
    one, two = logged(single_dir, "train/loss"), logged(double_dir, "train/loss")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=TOLERANCE), step
    norms_one, norms_two = logged(single_dir, "train/grad_norm"), logged(double_dir, "train/grad_norm")
    assert norms_two[1] == pytest.approx(norms_one[1], rel=TOLERANCE), "gradients are synchronised across ranks"


@pytest.mark.slow  # the pair fixture
def test_sharded_evaluation_equals_the_single_process_one(pair):
    single_dir, double_dir = pair
    for step in (0, 2, 4):
        a, b = predictions(single_dir, step), predictions(double_dir, step)
        assert [p["id"] for p in a] == [p["id"] for p in b] and len(a) == 10
        assert [p["prediction"] for p in a] == [p["prediction"] for p in b], step
    for key in ("eval/exact_match", "eval/position_accuracy", "eval/unparseable_rate"):
        assert logged(single_dir, key) == logged(double_dir, key), key


@pytest.mark.slow  # the pair fixture
def test_only_rank_zero_writes_records(pair):
    _, double_dir = pair
    summary = json.loads((double_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    facts = summary["facts"]
    assert facts["world_size"] == 2 and facts["effective_batch"] == 4 and facts["distributed_backend"] == "gloo"
    assert len(list((double_dir / "wandb").glob("offline-run-*"))) == 1
    assert len((double_dir / "samples" / "step-000004.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in double_dir.iterdir() if p.name.startswith("summary")) == ["summary.json"]


def test_learning_rate_scaling_is_explicit():
    cfg = TrainerConfig(lr=1e-3, batch_size=2, grad_accum=2, lr_reference_batch=8)
    assert cfg.effective_batch(world_size=2) == 8
    assert cfg.effective_lr(world_size=4) == 1e-3  # not scaled unless asked
    scaled = TrainerConfig(lr=1e-3, batch_size=2, grad_accum=2, lr_reference_batch=8, lr_scale_with_batch=True)
    assert scaled.effective_lr(world_size=4) == pytest.approx(2e-3)


@pytest.mark.slow
def test_torchrun_runs_the_same_trial(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    out, run_dir = train(
        tmp_path,
        "torchrun",
        "trainer.batch_size=2",
        "trainer.devices=2",
        "logger=none",
        launcher=[torchrun, "--standalone", "--nproc_per_node=2"],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["facts"]["world_size"] == 2
    assert sorted(logged(run_dir, "train/loss")) == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_sweep_of_multi_process_trials(tmp_path):
    out = run_app(
        tmp_path,
        "vlmqc.train",
        "-m",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *COMMON,
        "trainer.batch_size=2",
        "trainer.devices=2",
        "prompt=short,json",
        "logger=none",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(summaries) == 2 and all(s["status"] == "completed" and s["facts"]["world_size"] == 2 for s in summaries)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_a_slurm_job_train_like_one_process(pair, tmp_path):
    """The multi-node path (trainer.nodes=2) as Slurm runs it: one Hydra job per node, each told by
    Slurm's variables which node it is (read by submitit, as under hydra/launcher=slurm_multinode),
    each starting one rank; here both "nodes" are this machine."""
    single_dir, _ = pair
    run_dir, port = tmp_path / "nodes", free_port()
    env = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NODELIST": "localhost",
    }
    args = [
        f"hydra.run.dir={run_dir}",
        *COMMON,
        "trainer.batch_size=2",
        "trainer.nodes=2",
        "trainer.devices=1",
        f"trainer.rdzv_port={port}",
    ]
    nodes = [
        run_app(
            tmp_path,
            "vlmqc.train",
            *args,
            env={**env, "SLURM_NODEID": str(n), "SLURM_PROCID": str(n), "SLURM_LOCALID": "0"},
            wait=False,
        )
        for n in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    facts = json.loads((run_dir / "summary.json").read_text())["facts"]
    assert facts["world_size"] == 2 and facts["effective_batch"] == 4
    one, two = logged(single_dir, "train/loss"), logged(run_dir, "train/loss")
    assert sorted(two) == [1, 2, 3, 4] and all(two[s] == pytest.approx(one[s], rel=TOLERANCE) for s in one)
    assert [p["prediction"] for p in predictions(run_dir, 4)] == [p["prediction"] for p in predictions(single_dir, 4)]


@pytest.mark.slow  # a real process, which prepares the data before the launcher refuses
def test_several_nodes_outside_a_slurm_job_is_a_config_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    out = subprocess.run(
        [sys.executable, "-m", "vlmqc.train", f"hydra.run.dir={tmp_path / 'run'}", "trainer.nodes=2", "logger=none"],
        capture_output=True,
        text=True,
        env={**env, "VLMQC_CACHE_DIR": str(tmp_path / "cache")},
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "trainer.nodes=2" in out.stdout + out.stderr and "slurm_multinode" in out.stdout + out.stderr


WRITES_LOG = """
import os, sys
log = os.environ["VLMQC_TEST_WRITES"]
watched = os.environ["VLMQC_TEST_WATCH"]
def hook(event, args):
    # every file a process opens for writing under the adapter folder, with the process's id
    if event != "open" or not isinstance(args[0], str) or not args[0].startswith(watched):
        return
    if any(c in str(args[1]) for c in "wax+"):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {args[0]}\\n")
sys.addaudithook(hook)
"""


@pytest.mark.slow  # two ranks signalled, then resumed: two multi-process trials
def test_sigterm_to_the_launcher_stops_the_ranks_and_records_it_and_one_rank_saves(tmp_path):
    """The signal reaches the launcher process only; the ranks stop at one step end with a
    checkpoint, the record says interrupted; the rerun resumes and only rank 0 writes the adapter
    (seen by an audit hook in every process: sitecustomize on PYTHONPATH)."""
    hooks, run_dir = tmp_path / "hooks", tmp_path / "ddp"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(WRITES_LOG)
    env = {
        **os.environ,
        "VLMQC_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_SILENT": "true",
        "VLMQC_TEST_WRITES": str(tmp_path / "writes.log"),
        "VLMQC_TEST_WATCH": str(run_dir / "adapter"),
        "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "vlmqc.train",
        f"hydra.run.dir={run_dir}",
        *COMMON,
        "trainer.batch_size=2",
        "trainer.devices=2",
        "logger=none",
        "trainer.max_steps=40",
        "data.train_size=64",
        "trainer.eval_every=0",
        "trainer.eval_before=false",
        "trainer.save_steps=100",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not ((run_dir / "metrics.jsonl").exists() and "train/loss" in (run_dir / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # to the launcher alone, as a scheduler would
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["reason"], summary["reason"]
    step = summary["step"]
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file(), summary["reason"]

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"].endswith(f"checkpoint-{step}")
    assert sorted(logged(run_dir, "train/loss")) == list(range(1, 41))
    writers = {line.split()[0] for line in (tmp_path / "writes.log").read_text().splitlines()}
    assert len(writers) == 1, f"{len(writers)} processes wrote the adapter folder"
