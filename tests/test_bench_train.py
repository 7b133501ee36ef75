"""benchmarks/bench_train.py on the CPU: the four recipes train the tiny model, agree on the loss of
the same first rows, and write their figures; a recipe that learns other tokens fails the check."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"
TINY = ["model=tiny", "data=pair_round", "prompt=short", "data.train_size=8", "data.test_size=2"]
FAST = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--check", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One dataset and model cache for the module: both tests use the same tiny trial."""
    return tmp_path_factory.mktemp("bench-cache")


def bench(tmp_path: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMQC_CACHE_DIR": str(cache), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


@pytest.mark.slow
def test_every_recipe_agrees_on_the_loss_and_reports_its_figures(tmp_path, cache):
    recipes = "a,b,c,d" if importlib.util.find_spec("trl") else "a,c,d"
    out = bench(tmp_path, cache, "--recipes", recipes, *FAST, "--out", str(tmp_path / "out"), "--", *TINY)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all agree" in out.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["precision"] == "fp32" and report["loss_check"]["passed"] and report["loss_check"]["rows"] == 3
    assert report["flops_per_token"] > 0
    figures = report["recipes"]
    assert sorted(figures) == recipes.split(",")
    losses = [f["loss"] for f in figures.values()]
    # a random tiny model's loss over a 1024-token vocabulary: near ln(1024), the same to fp32 rounding in every recipe
    assert 4 < losses[0] < 9 and max(losses) - min(losses) < 1e-4 * losses[0]
    for f in figures.values():
        assert f["samples_per_second"] > 0 and f["tokens_per_second"] > f["samples_per_second"] and f["steps"] >= 1
        assert f["peak_memory_gb"] is None and f["mfu"] is None  # no GPU: neither is measured
        assert math.isclose(f["vs_c"], f["samples_per_second"] / figures["c"]["samples_per_second"])
    assert (figures["a"]["batch"], figures["a"]["checkpointing"]) == (1, True)
    assert (figures["c"]["batch"], figures["c"]["checkpointing"]) == (8, False)  # trainer.batch_size: no batch search on the CPU
    assert figures["d"]["batch"] == 8
    if "b" in figures:
        assert figures["b"]["checkpointing"] and figures["b"]["batch"] == 8
    # recipe d really ran vlmqc's trial, whose metrics the figures were read from
    assert (tmp_path / "out" / "d" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_a_recipe_that_learns_the_prompt_too_fails_the_check(tmp_path, cache):
    out = bench(tmp_path, cache, "--recipes", "a,c", *FAST, "--fault", "c", "--out", str(tmp_path / "out"), "--", *TINY)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FAILED: (c)" in out.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not report["loss_check"]["passed"] and report["loss_check"]["failed"] == ["c"]
