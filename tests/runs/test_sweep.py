"""Sweeps as a user runs them: real Hydra multiruns of the tiny model in a subprocess."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONF, compose_app, run_app

from vlmqc.config import to_object

# num_workers=1: the data generated in the sweep's own process, not in a worker pool whose start costs seconds
SHRINK = [
    "data.train_size=16",
    "data.test_size=6",
    "trainer.max_steps=4",
    "trainer.logging_steps=1",
    "trainer.samples=2",
    "trainer.eval_batch_size=6",
    "num_workers=1",
]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def multirun(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_app(
        tmp_path, "vlmqc.train", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *SHRINK, *overrides, timeout=900
    )


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """Two trials, the first of which diverges (lr 1e30): the sweep must go on to the second."""
    tmp = tmp_path_factory.mktemp("sweep")
    out = multirun(tmp, "trainer.lr=1e30,1e-3", "trainer.max_grad_norm=1e30")
    return tmp / "sweep", out


def test_a_failed_trial_does_not_stop_the_sweep(failing_sweep):
    sweep, out = failing_sweep
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    records = summaries(sweep)
    assert len(records) == 2
    statuses = sorted(r["status"] for r in records.values())
    assert statuses == ["completed", "failed"]
    (failed,) = [r for r in records.values() if r["status"] == "failed"]
    (completed,) = [r for r in records.values() if r["status"] == "completed"]
    assert failed["reason"].startswith("non-finite training loss at step") and "lr=1e+30" in failed["run_name"]
    assert (
        "lr=0.001" in completed["run_name"] and completed["step"] == 4
    )  # the trial after the failed one ran to its end
    assert "1 of 2 trial(s) did not complete" in out.stdout and failed["run_name"] in out.stdout


def test_a_sweeps_trials_share_a_wandb_group_and_carry_their_overrides_as_tags(failing_sweep):
    sweep, _ = failing_sweep
    seen = {}
    for run_dir in sweep.iterdir():
        runs = list((run_dir / "wandb").glob("offline-run-*")) if run_dir.is_dir() else []
        if not runs:
            continue
        out = subprocess.run(
            ["wandb", "leet", "inspect", "--json", str(runs[0])],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        (run,) = [json.loads(line)["run"] for line in out.splitlines() if json.loads(line).get("type") == "run"]
        summary = json.loads((run_dir / "summary.json").read_text())
        seen[run_dir.name] = run
        assert run.get("run_group") == sweep.name
        assert "trainer.max_grad_norm=1e+30" in run.get("tags", []) and any(
            t.startswith("trainer.lr=") for t in run["tags"]
        )
        exit_code = json.loads(
            subprocess.run(
                ["wandb", "leet", "inspect", "--summary", "--json", str(runs[0])],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["exit_code"]
        assert exit_code == (0 if summary["status"] == "completed" else 1)
    assert len(seen) == 2


def test_the_sweeps_report_has_a_row_per_trial_and_names_the_failed_one(failing_sweep):
    sweep, _ = failing_sweep
    out = subprocess.run(
        [sys.executable, "-m", "vlmqc.compare", str(sweep)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = Path(out.stdout.strip())
    assert report == sweep / "report" / "report.html"
    text = report.read_text()
    rows = re.findall(r'<tr class="row-(\w+)[^"]*" data-dir="([^"]+)"', text)  # a row may also be marked below-chance
    assert sorted(status for status, _ in rows) == ["completed", "failed"]
    assert {Path(d).name for _, d in rows} == set(summaries(sweep))
    (failed,) = [r for r in summaries(sweep).values() if r["status"] == "failed"]
    assert html.escape(failed["reason"]) in text


def test_every_experiment_composes_and_validates():
    assert {"first_trial", "second_trial", "raw_vs_diff", "prompt_ablation", "lora_rank", "image_size"} <= set(
        EXPERIMENTS
    )
    for name in EXPERIMENTS:
        cfg = compose_app("train", [f"experiment={name}"])
        for group in ("model", "prompt", "lora", "image_size", "trainer", "logger"):
            to_object(cfg[group], group)
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        if "vlmqc train -m experiment=" + name in text:  # a study: the sweep is in the file
            assert yaml.safe_load(text)["hydra"]["sweeper"]["params"], f"{name} holds its sweep"
        else:  # one trial (the first run and its plateau), its command in the file
            assert "vlmqc train experiment=" + name in text and "sweeper" not in text, name


@pytest.mark.slow  # a trial of every study, one after another
def test_every_experiment_runs_on_the_tiny_model(tmp_path):
    # model=tiny and a small batch: the scratch studies' own model and batch of 64 would make this a CPU training run
    out = multirun(
        tmp_path,
        "experiment=glob(*)",
        "model=tiny",
        "trainer.batch_size=2",
        "trainer.dataloader_workers=0",
        "logger=none",
        "trainer.eval_before=false",
        "trainer.max_steps=1",
        "trainer.samples=0",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = summaries(tmp_path / "sweep")
    assert len(records) == len(EXPERIMENTS) and all(r["status"] == "completed" for r in records.values())


@pytest.mark.slow  # four trials, up to 672 pixels
def test_a_study_expands_its_own_sweep(tmp_path):
    out = multirun(
        tmp_path,
        "experiment=image_size",
        "logger=none",
        "trainer.eval_before=false",
        "trainer.max_steps=1",
        "trainer.samples=0",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sizes = sorted(r["facts"]["processed_resolution"][0] for r in summaries(tmp_path / "sweep").values())
    assert sizes == [224, 336, 448, 672]
    assert not any("'" in p.name for p in (tmp_path / "sweep").iterdir())


@pytest.mark.slow
def test_submitit_local_runs_trials_as_separate_processes(tmp_path):
    out = multirun(
        tmp_path,
        "hydra/launcher=submitit_local",
        "prompt=short,json",
        "logger=none",
        "trainer.eval_before=false",
        "trainer.samples=0",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = summaries(tmp_path / "sweep")
    assert len(records) == 2 and all(r["status"] == "completed" for r in records.values())
    assert len({p.name for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.name.isdigit()}) == 2  # two jobs


@pytest.mark.slow
def test_optuna_searches_lr_and_rank(tmp_path):
    out = multirun(
        tmp_path,
        "hydra/sweeper=lr_rank",
        "hydra.sweeper.n_trials=2",
        "logger=none",
        "trainer.eval_before=false",
        "trainer.samples=0",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"trainer.lr", "lora"} and results["best_value"] == results["best_value"]
    assert len(summaries(tmp_path / "sweep")) == 2


def test_the_slurm_launcher_is_configured_for_requeue():
    cfg = compose_app_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout >= 1
    assert launcher._target_.endswith("SlurmLauncher")
    assert compose_app_hydra(["hydra/launcher=slurm"]).hydra.launcher.partition is None  # the cluster's default


def compose_app_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from vlmqc.config import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_launchers_take_their_gpus_and_nodes_from_the_trainer():
    cfg = compose_app_hydra(["hydra/launcher=slurm_multinode", "trainer.nodes=2", "trainer.devices=4"])
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, launcher.max_num_timeout) == (2, 1, 4, 3)
    import torch

    assert (
        compose_app_hydra(["hydra/launcher=gpus_local"]).hydra.launcher.gpus_per_node == torch.cuda.device_count()
    )  # all, to claim from


def test_the_end_of_a_sweep_lists_an_unreadable_summary_as_such(tmp_path, capsys):
    from omegaconf import OmegaConf

    from vlmqc.runs.sweep import SweepSummary

    records = {
        "good": '{"status": "completed", "final": {"step": 4, "eval/exact_match": 0.5}}',
        "cut": '{"status": "comp',
        "typed": '{"status": "completed", "final": "abc"}',
        "none": None,
    }
    for name, text in records.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("{}")
        if text is not None:
            (tmp_path / name / "summary.json").write_text(text)
    with pytest.raises(SystemExit) as exit_:
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert re.search(r"completed\s+good\s+eval/exact_match=0\.5000", out)
    assert f"cut: unreadable: {tmp_path / 'cut' / 'summary.json'}: not JSON" in out
    assert f"{tmp_path / 'typed' / 'summary.json'}: final: expected" in out and re.search(
        r"completed\s+typed\s*\n", out
    )
    assert "none: no record: the trial wrote no summary.json" in out and "2 of 4 trial(s) did not complete" in out
