"""vlmqc installed as a wheel, the way a user without the repository has it: the config ships inside
the package, and ``vlmqc train`` runs from an empty folder."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # builds a wheel, makes a virtual environment, runs a trial


def test_a_wheel_in_a_fresh_environment_runs_the_main_job_from_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("vlmqc-*.whl")

    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    # torch, transformers and the rest come from this environment's site-packages, named as plain
    # paths: a path in a .pth file is searched, but the .pth files inside it (this checkout's
    # editable install among them) are not run, so the only vlmqc there is the wheel's
    ours = sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"]
    Path(ours, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WANDB_MODE")}
    env.update(
        VLMQC_CACHE_DIR=str(tmp_path / "cache"), WANDB_SILENT="true", PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    )
    where = subprocess.run(
        [str(python), "-c", "import vlmqc; print(vlmqc.__file__)"], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.stdout.strip().startswith(str(env_dir)), where.stdout + where.stderr  # the wheel's, not the checkout's

    helped = subprocess.run(
        [str(env_dir / "bin" / "vlmqc"), "--help"], cwd=work, env=env, capture_output=True, text=True
    )
    assert helped.returncode == 0 and "train" in helped.stdout and "preview" in helped.stdout
    # the README's main job, scaled down
    shrink = [
        "data.train_size=32",
        "data.test_size=8",
        "trainer.max_steps=4",
        "trainer.eval_every=0",
        "trainer.samples=2",
    ]
    out = subprocess.run(
        [str(env_dir / "bin" / "vlmqc"), "train", "experiment=first_run", *shrink, "num_workers=1"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (summary,) = (work / "outputs" / "runs").glob("*/summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "completed" and record["config"]["model"]["name"] == "scratch_small"
    assert record["final"]["eval/position_accuracy"] is not None
