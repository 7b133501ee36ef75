"""Parallel trials sharing a machine's GPUs: real processes, real file locks, no GPU needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from vlmqc.config import ConfigError
from vlmqc.training import gpus

# a trial: claim n GPUs, say which and when, hold them for a while, exit (which frees them)
TRIAL = """
import json, sys, time
from vlmqc.training import gpus
start = time.time()
claimed = gpus.claim(int(sys.argv[1]), poll_seconds=0.1)
import os
print(json.dumps({"claimed": claimed, "env": os.environ["CUDA_VISIBLE_DEVICES"], "at": time.time()}), flush=True)
time.sleep(float(sys.argv[2]))
"""


def start(tmp_path, n: int, hold: float, visible: str = "0,1") -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    return subprocess.Popen(
        [sys.executable, "-c", TRIAL, str(n), str(hold)], env=env, stdout=subprocess.PIPE, text=True
    )


def result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    return json.loads(out)


@pytest.mark.slow  # three processes that hold their GPUs for seconds
def test_parallel_trials_take_different_gpus_and_a_third_waits(tmp_path):
    t0 = time.time()
    first, second = start(tmp_path, 1, 3.0), start(tmp_path, 1, 3.0)
    time.sleep(1.0)  # both hold theirs by now
    third = start(tmp_path, 1, 0.0)
    a, b, c = result(first), result(second), result(third)
    assert sorted(a["claimed"] + b["claimed"]) == ["0", "1"]
    assert a["env"] == a["claimed"][0] and b["env"] == b["claimed"][0]  # CUDA_VISIBLE_DEVICES narrowed
    assert c["at"] - t0 >= 2.5, "the third trial ran before a GPU was free"
    assert c["claimed"][0] in ("0", "1")


@pytest.mark.slow  # three processes, one holding its GPU for 2 s
def test_a_two_gpu_trial_waits_for_both_without_holding_one(tmp_path):
    one = start(tmp_path, 1, 2.0)
    time.sleep(1.0)
    both = start(tmp_path, 2, 0.0)
    single_after = start(tmp_path, 1, 0.0)  # gets the free GPU at once: the waiting 2-GPU trial holds none
    s = result(single_after)
    assert result(one)["claimed"] != s["claimed"]
    assert sorted(result(both)["claimed"]) == ["0", "1"]


def test_more_devices_than_visible_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=r"trainer.devices=3: only 2 GPU\(s\)"):
        gpus.claim(3)
