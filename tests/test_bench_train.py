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
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"
# eval_every as experiment=base/scratch has it: recipe (d)'s loss check must not need an eval set
TINY = [
    "model=tiny",
    "data=pair_round",
    "prompt=short",
    "data.train_size=8",
    "data.test_size=2",
    "trainer.eval_every=50",
]
FAST = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--check", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One dataset and model cache for the module: both tests use the same tiny trial."""
    return tmp_path_factory.mktemp("bench-cache")


def bench(tmp_path: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMQC_CACHE_DIR": str(cache), "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )


@pytest.mark.slow
def test_every_recipe_agrees_on_the_loss_and_reports_its_figures(tmp_path, cache):
    recipes = "a,b,c,d" if importlib.util.find_spec("trl") else "a,c,d"
    # (d) with its speed levers, checked on the loss too
    levers = "trainer.preprocess=once trainer.loss=answer_only trainer.vision_cache=memory"
    out = bench(
        tmp_path,
        cache,
        "--recipes",
        recipes,
        *FAST,
        "--vlmqc-overrides",
        levers,
        "--out",
        str(tmp_path / "out"),
        "--",
        *TINY,
    )
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
    assert (figures["c"]["batch"], figures["c"]["checkpointing"]) == (
        8,
        False,
    )  # trainer.batch_size: no batch search on the CPU
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


@pytest.mark.slow
def test_a_recipe_out_of_memory_is_recorded_and_the_others_still_run(tmp_path, cache):
    """At a batch only the leaner recipe fits, its figure is the point: (c) runs out of memory
    (simulated: a CPU cannot), (d) still runs and is reported, the exit status says one failed."""
    out = bench(
        tmp_path, cache, "--recipes", "c,d", *FAST, "--fault-oom", "c", "--out", str(tmp_path / "out"), "--", *TINY
    )
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "(c) hf-tuned: FAILED" in out.stdout and "OutOfMemoryError" in out.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["failed_recipes"]) == ["c"] and "out of memory" in report["failed_recipes"]["c"]
    assert list(report["recipes"]) == ["d"] and report["recipes"]["d"]["samples_per_second"] > 0
    assert report["loss_check"]["passed"]  # (d) was checked against the reference all the same


def load_script():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_full_fine_tuning_counts_six_flops_per_weight_and_token(tmp_path, cache, monkeypatch):
    """The hook count against the textbook formula from the shapes alone: every linear weight of the
    tiny LLaVA trains, so 6 x its parameters x the rows it sees (CLIP: 197 patches with CLS, the
    projector 196, the language model every token), plus 12 L s^2 d for the attention."""
    monkeypatch.setenv("VLMQC_CACHE_DIR", str(cache))
    bench = load_script()
    cfg, objs = bench.compose_cfg([*TINY, "trainer.device=cpu", "lora=full", "lora.train_vision=true"])
    dsd, _ = bench.get_dataset(objs["data"], cfg.paths.cache_dir, num_workers=1, progress=False)
    rows = [dsd["train"][i] for i in range(2)]
    s = bench.Setup([], cfg, objs, dsd, "cpu", False, tmp_path, rows)
    flops, loss = bench.reference(s)

    model, processor, family = bench.fresh_model(s)
    batch = bench.Collator(processor, family, objs["prompt"], train=True)([rows[0]])
    lengths = [
        int(bench.Collator(processor, family, objs["prompt"], train=True)([r])["attention_mask"].sum()) for r in rows
    ]
    part = {"vision": 0, "projector": 0, "language": 0}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            part["language" if m is model.get_output_embeddings() else family.part(name)] += m.weight.numel()
    text, vision = model.config.text_config, model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    expected = sum(
        6 * (part["vision"] * (patches + 1) + part["projector"] * patches + part["language"] * n)
        + 12 * text.num_hidden_layers * n * n * text.hidden_size
        for n in lengths
    ) / sum(lengths)
    assert batch["pixel_values"].shape[-1] == vision.image_size
    assert flops == pytest.approx(expected, rel=1e-9)
    assert 4 < loss < 9


# ---------------------------------------------------------------------------- benchmarks/bench_scaling.py

SCALING = ROOT / "benchmarks" / "bench_scaling.py"
SWEEP = ["--device", "cpu", "--steps", "1", "--warmup", "1"]


def scaling(tmp_path: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMQC_CACHE_DIR": str(cache), "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, str(SCALING), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )


@pytest.mark.slow
def test_scaling_sweeps_batch_sizes_with_the_sub_runs_figures(tmp_path, cache):
    out = tmp_path / "out"
    got = scaling(
        tmp_path,
        cache,
        *SWEEP,
        "--batch-sizes",
        "2",
        "4",
        "--image-sizes",
        "224",
        "--out",
        str(out),
        "--",
        "model=tiny",
        "data.train_size=16",
    )
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    summary = json.loads((out / "scaling.json").read_text())
    assert summary["failed"] == [] and summary["not_run"] == [] and summary["recipes"] == ["c", "d"]
    rows = summary["rows"]
    assert sorted((r["image_size"], r["batch"], r["recipe"]) for r in rows) == [
        ("224", b, k) for b in (2, 4) for k in "cd"
    ]
    for r in rows:
        assert r["ok"] and r["samples_per_second"] > 0 and r["tokens_per_second"] > r["samples_per_second"]
        # the figures are the sub-run's own: its report.json, where both recipes ran at the sweep's batch
        report = json.loads((out / f"224-{r['batch']}" / "report.json").read_text())
        figures = report["recipes"][r["recipe"]]
        assert figures["batch"] == r["batch"] == r["recipe_batch"]
        assert (r["samples_per_second"], r["tokens_per_second"], r["peak_memory_gb"], r["mfu"]) == (
            figures["samples_per_second"], figures["tokens_per_second"], figures["peak_memory_gb"], figures["mfu"],
        )  # fmt: skip
        assert (
            "image_size=224" in report["overrides"] and f"trainer.batch_size={r['batch']}" in report["vlmqc_overrides"]
        )
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "224     4 d vlmqc" in got.stdout  # the table


@pytest.mark.slow
def test_scaling_records_a_failed_run_and_keeps_the_others(tmp_path, cache):
    """image_size=225 is no option of conf/image_size: that run's bench_train fails in Hydra, for real."""
    out = tmp_path / "out"
    args = [
        "--recipes",
        "c",
        *SWEEP,
        "--batch-sizes",
        "2",
        "--image-sizes",
        "224",
        "225",
        "--out",
        str(out),
        "--",
        "model=tiny",
        "data.train_size=16",
    ]
    got = scaling(tmp_path, cache, *args)
    assert got.returncode == 1, got.stdout[-3000:] + got.stderr[-3000:]
    summary = json.loads((out / "scaling.json").read_text())
    good, bad = sorted(summary["rows"], key=lambda r: r["image_size"])
    assert (good["image_size"], good["ok"]) == ("224", True) and good["samples_per_second"] > 0
    assert (bad["image_size"], bad["ok"]) == ("225", False) and "Could not find 'image_size/225'" in bad[
        "error"
    ].splitlines()[0]
    assert [(f["image_size"], f["batch"]) for f in summary["failed"]] == [("225", 2)]
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FAILED" in got.stdout and (out / "225-2" / "bench_train.log").is_file()


@pytest.mark.parametrize("bad", [["--batch-sizes", "0"], ["--recipes", "c,x"], ["image_size=448"], []])
def test_scaling_refuses_bad_arguments(tmp_path, bad):
    args = [*bad, "--out", str(tmp_path / "out")] if bad else []  # [] : --out missing
    got = subprocess.run(
        [sys.executable, str(SCALING), *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert got.returncode == 2, got.stderr
    assert not (tmp_path / "out").exists()


def test_scaling_keeps_the_points_run_when_the_sweep_is_stopped(tmp_path, monkeypatch):
    """A sweep stopped part-way (a time limit, a lost machine) has already written its finished
    points: scaling.json names them and the points not run; the plot says it is partial."""
    spec = importlib.util.spec_from_file_location("bench_scaling_under_test", SCALING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []

    def fake_run_one(args, size, batch):
        calls.append((size, batch))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second point never finishes
        row = {"image_size": size, "batch": batch, "recipe": "c", "name": "hf-tuned", "run": "x", "ok": True}
        return [
            dict(row, samples_per_second=10.0, tokens_per_second=100.0, peak_memory_gb=1.0, mfu=0.1, recipe_batch=batch)
        ], None

    monkeypatch.setattr(module, "run_one", fake_run_one)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        module.main(
            [
                "--recipes",
                "c",
                "--batch-sizes",
                "2",
                "4",
                "8",
                "--image-sizes",
                "224",
                "--out",
                str(out),
                "--",
                "model=tiny",
            ]
        )
    summary = json.loads((out / "scaling.json").read_text())
    assert [(r["batch"], r["samples_per_second"]) for r in summary["rows"]] == [(2, 10.0)]
    assert summary["not_run"] == [{"image_size": "224", "batch": 4}, {"image_size": "224", "batch": 8}]
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # written atomically


@pytest.mark.slow
def test_scaling_keeps_the_recipe_that_fits_where_another_runs_out_of_memory(tmp_path, cache, monkeypatch):
    """A point where (c) runs out of memory (bench_train's test fault) and (d) runs: (c)'s row is
    failed with its own error, (d)'s keeps its figures, and the point is named as failed."""
    spec = importlib.util.spec_from_file_location("bench_scaling_oom", SCALING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = module.command
    monkeypatch.setattr(
        module,
        "command",
        lambda args, size, batch, out: [
            *plain(args, size, batch, out)[:2],
            "--fault-oom",
            "c",
            *plain(args, size, batch, out)[2:],
        ],
    )
    monkeypatch.setenv("VLMQC_CACHE_DIR", str(cache))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    rc = module.main(
        [
            *SWEEP,
            "--batch-sizes",
            "2",
            "--image-sizes",
            "224",
            "--out",
            str(out),
            "--",
            "model=tiny",
            "data.train_size=16",
        ]
    )
    assert rc == 1
    summary = json.loads((out / "scaling.json").read_text())
    rows = {r["recipe"]: r for r in summary["rows"]}
    assert not rows["c"]["ok"] and "out of memory" in rows["c"]["error"]
    assert rows["d"]["ok"] and rows["d"]["samples_per_second"] > 0 and "error" not in rows["d"]
    assert [(f["image_size"], f["batch"]) for f in summary["failed"]] == [("224", 2)]
    assert "(out of memory): recipe(s) c failed" in summary["failed"][0]["error"]
