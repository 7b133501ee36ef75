"""A trial end to end on the tiny model: what it trains, what it records, how it fails and resumes."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TRIAL, WANDB_SECRET, compose_app, prompt_option
from conftest import trial as trial_in_subprocess
from transformers import Trainer, TrainerCallback, set_seed

from vlmqc.answers import PARSER_VERSION, parse_answer
from vlmqc.cli.train import trial
from vlmqc.collate import Collator
from vlmqc.config import ConfigError, ImageSizeConfig, LoraConfig, ModelConfig, TrainerConfig, data_config, to_object
from vlmqc.data import get_dataset
from vlmqc.models import adapt, load
from vlmqc.preflight import validate
from vlmqc.training.arguments import training_arguments


def leet(run_dir: Path, *flags: str):
    """What W&B itself recorded, read back with W&B's own tool."""
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", *flags, str(wandb_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out) if "--summary" in flags else [json.loads(line) for line in out.splitlines() if line.strip()]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def best_step(rows: list[dict], metric: str) -> int:
    """The trained evaluation step with the highest ``metric`` (the earliest of equals), from metrics.jsonl rows."""
    values = {r["trainer/global_step"]: r[metric] for r in rows if metric in r and r["trainer/global_step"] > 0}
    return min(values, key=lambda step: (-values[step], step))


def test_main_job_completes_and_records_everything_locally(completed_trial):
    run_dir, _ = completed_trial
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["reason"] is None and summary["step"] == 8
    facts = summary["facts"]
    assert facts["processed_resolution"] == [224, 224] and facts["image_tokens_per_sample"] == 196
    assert facts["source_image_size"] == [448, 190]
    assert 0 < facts["trainable_parameters"] < facts["total_parameters"]
    assert len(facts["dataset_hash"]) == 16 and "git_commit" in facts
    rows = metrics(run_dir)
    train_steps = [r["trainer/global_step"] for r in rows if "train/loss" in r]
    assert train_steps == [2, 4, 6, 8]
    assert all("train/learning_rate" in r and "train/grad_norm" in r for r in rows if "train/loss" in r)
    assert any("train/samples_per_second" in r and "train/tokens_per_second" in r for r in rows)
    # the Trainer's whole-run average (warm-up included) is its own series, not one more interval
    (overall,) = [r for r in rows if "train/overall_samples_per_second" in r]
    assert "train/samples_per_second" not in overall and "train/overall_runtime" in overall
    evals = {r["trainer/global_step"]: r for r in rows if "eval/exact_match" in r}
    assert set(evals) == {0, 4, 8}, "the base model before training, every eval_every steps, and the trained one after"
    for r in evals.values():
        assert {"eval/position_accuracy", "eval/unparseable_rate"} <= set(r)
    assert any("eval/loss" in r and r["trainer/global_step"] == 8 for r in rows)
    assert summary["final"]["step"] == 8 and "eval/exact_match" in summary["final"]
    assert summary["schema_version"] == 2 and summary["facts"]["parser_version"] == PARSER_VERSION
    assert summary["baseline"] == {k: v for k, v in evals[0].items() if k.startswith("eval/")} | {
        "step": 0,
        "eval/loss": summary["baseline"]["eval/loss"],
    }
    assert summary["best_metric"] == "eval/exact_match" and summary["best"]["step"] == best_step(
        rows, "eval/exact_match"
    )
    assert summary["chance"]["prior"]["eval/exact_match"] == summary["chance"]["prior"]["eval/position_accuracy"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and (
        run_dir / "adapter" / "adapter_model.safetensors"
    ).is_file()


def test_samples_are_the_same_test_ids_at_every_evaluation(completed_trial):
    run_dir, _ = completed_trial
    before = [json.loads(x) for x in (run_dir / "samples" / "step-000000.jsonl").read_text().splitlines()]
    after = [json.loads(x) for x in (run_dir / "samples" / "step-000008.jsonl").read_text().splitlines()]
    assert [r["id"] for r in before] == [r["id"] for r in after] and len(after) == 4
    predictions = [json.loads(x) for x in (run_dir / "predictions" / "step-000008.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and all({"id", "target", "prediction", "parsed"} <= set(p) for p in predictions)
    for r in after:
        assert (run_dir / r["image"]).is_file()
        assert r["truth"].startswith("The red star is at ") and isinstance(r["correct"], bool)
        assert "prediction" in r and "red star" in r["prompt"]


def test_wandb_offline_run_holds_every_logged_step_and_the_samples_table(completed_trial):
    run_dir, _ = completed_trial
    records = leet(run_dir)
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    logged = {(h["trainer/global_step"], round(h["train/loss"], 6)) for h in history if "train/loss" in h}
    local = {(r["trainer/global_step"], round(r["train/loss"], 6)) for r in metrics(run_dir) if "train/loss" in r}
    assert logged == local and len(local) == 4
    assert {h["trainer/global_step"] for h in history if "eval/exact_match" in h} == {0, 4, 8}
    tables = [h["trainer/global_step"] for h in history if h.get("eval/predictions._type") == "table-file"]
    assert tables == [0, 4, 8]
    summary = leet(run_dir, "--summary")
    assert summary["config"]["facts"]["image_tokens_per_sample"] == 196
    assert summary["config"]["lora"]["r"] == 16 and summary["config"]["data"]["name"] == "star"
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["summary"]["status"] == "completed"
    # W&B's last exact match against one worked out here from the stored answers of the last evaluation
    rows = [json.loads(x) for x in (run_dir / "predictions" / "step-000008.jsonl").read_text().splitlines()]
    right = [parse_answer(prompt_option("long"), r["prediction"], "star").target == r["target"] for r in rows]
    assert len(rows) == 12 and summary["summary"]["eval/exact_match"] == pytest.approx(sum(right) / 12)
    # chance: every test star answered with the train split's most frequent star position
    dsd, _ = get_dataset(
        data_config(compose_app("train", TRIAL)), run_dir.parent / "cache", num_workers=1, progress=False
    )
    targets = Counter(dsd["train"]["target"])
    prior = min(targets, key=lambda t: (-targets[t], t))
    prior_level = sum(t == prior for t in dsd["test"]["target"]) / 12
    assert summary["summary"]["chance/eval/exact_match"] == pytest.approx(prior_level)
    assert summary["summary"]["chance_kind/eval/exact_match"] == "prior"
    # one level per metric, the best guesser's: position accuracy's is the prior's or a uniform guess's
    assert summary["summary"]["chance/eval/position_accuracy"] == pytest.approx(max(prior_level, 1 / 27))
    assert summary["summary"]["chance_kind/eval/position_accuracy"] == ("prior" if prior_level >= 1 / 27 else "uniform")
    # W&B shows the summary's own level of every metric, and its kind
    levels = json.loads((run_dir / "summary.json").read_text())["chance"]["level"]
    assert {m: (summary["summary"][f"chance/{m}"], summary["summary"][f"chance_kind/{m}"]) for m in levels} == {
        m: (level["value"], level["kind"]) for m, level in levels.items()
    }
    assert summary["summary"]["best/step"] in (4, 8) and summary["summary"]["baseline/step"] == 0
    # star data has no pair to difference: no pixel ceiling
    assert json.loads((run_dir / "summary.json").read_text())["ceiling"] is None
    assert not [k for k in summary["summary"] if k.startswith("ceiling/")]


def test_the_api_key_is_never_written(completed_trial):
    run_dir, out = completed_trial
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert WANDB_SECRET.encode() not in path.read_bytes(), path
    assert WANDB_SECRET not in out.stdout + out.stderr


@pytest.mark.slow  # the same command again, in a second process
def test_a_completed_trial_is_not_run_twice(completed_trial, tmp_path):
    run_dir, _ = completed_trial
    before = (run_dir / "metrics.jsonl").read_bytes()
    again = trial_in_subprocess(run_dir.parent)
    assert again.returncode == 0
    assert "already completed" in again.stdout + again.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow  # a trial of its own (tests/runs/test_sweep.py's default-run sweep has a diverging trial too)
def test_non_finite_loss_fails_the_trial_with_its_step(tmp_path):
    out = trial_in_subprocess(
        tmp_path,
        "logger=none",
        "trainer.lr=1e30",
        "trainer.max_grad_norm=1e30",
        "trainer.logging_steps=1",
        "trainer.eval_before=false",
    )
    assert out.returncode == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["reason"] == f"non-finite training loss at step {summary['step']}" and 1 <= summary["step"] < 8
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.parametrize(
    "overrides, key", [(["lora.r=0"], "lora.r=0"), (["data=pair_square", "data.defect_rate=2"], "data.defect_rate=2.0")]
)
def test_bad_config_is_refused_naming_the_key(cli_exit, tmp_path, overrides, key):
    code, err = cli_exit("vlmqc.train", f"hydra.run.dir={tmp_path / 'run'}", *TRIAL, "logger=none", *overrides)
    assert code == 2 and key in err, err[-2000:]
    assert not (tmp_path / "run").exists()


def test_mixed_precision_without_a_gpu_is_refused_naming_the_key(tmp_path):
    """trainer.precision=bf16 with trainer.device=auto: known only at run time, where the device
    is; refused before training (the subprocess case below sees it as exit status 2)."""
    if torch.cuda.is_available():
        pytest.skip("bf16 is valid where there is a GPU")
    t = to_object(compose_app("train", ["trainer.precision=bf16"]).trainer, "trainer")
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16: mixed precision needs a GPU"):
        training_arguments(t, tmp_path, "cpu")


@pytest.mark.slow  # a real process each; the bf16 case generates the data and loads the model before it is refused
@pytest.mark.parametrize(
    "overrides, key",
    [
        (["lora.r=0"], "lora.r=0"),
        (["data=pair_square", "data.defect_rate=2"], "data.defect_rate=2.0"),
        (["trainer.precision=bf16"], "trainer.precision=bf16"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, overrides, key):
    if "bf16" in key and torch.cuda.is_available():
        pytest.skip("bf16 is valid where there is a GPU")
    out = trial_in_subprocess(tmp_path, "logger=none", *overrides)
    assert out.returncode == 2
    assert key in out.stdout + out.stderr


@pytest.mark.slow  # a trial of its own, at 448 pixels
def test_pair_data_json_prompt_and_image_size_as_typed_on_the_command_line(tmp_path):
    """``image_size=448`` (a number, which Hydra alone refuses as an option name) sets the input;
    pair data is scored with the inspection metrics, beside the pixel-difference detector's levels
    on the same test rows (summary.json and W&B's summary)."""
    out = trial_in_subprocess(
        tmp_path,
        "data=pair_mixed",
        "prompt=json",
        "lora=r4",
        "image_size=448",
        "trainer.max_steps=2",
        "trainer.eval_every=0",
        "trainer.samples=2",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        summary["facts"]["processed_resolution"] == [448, 448]
        and summary["facts"]["image_tokens_per_sample"] == (448 // 16) ** 2
    )
    assert summary["facts"]["source_image_size"][1] > 380  # the stacked pair
    final = summary["final"]
    for key in (
        "verdict_accuracy",
        "defect_recall",
        "escape_rate",
        "false_reject_rate",
        "position_accuracy",
        "defect_type_accuracy",
        "exact_match",
        "unparseable_rate",
        "loss",
    ):
        assert f"eval/{key}" in final, key
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples" / "step-000002.jsonl").read_text().splitlines()]
    assert all(json.loads(r["truth"])["verdict"] in ("pass", "defective") for r in samples)
    ceiling = summary["ceiling"]
    assert ceiling["examples"] == 12 and set(ceiling) == {
        "eval/verdict_accuracy",
        "eval/position_accuracy",
        "verdict_auroc",
        "examples",
    }
    # the best threshold is at least "all defective" or "all pass", and the synthetic defects are visible in the
    # pixels (experiments/LOG.md, 2026-11-25)
    defective = sum(
        json.loads(x)["verdict"] == "defective"
        for x in (tmp_path / "run" / "predictions" / "step-000002.jsonl").read_text().splitlines()
    )
    assert (
        ceiling["eval/verdict_accuracy"] >= max(defective, 12 - defective) / 12
        and ceiling["eval/verdict_accuracy"] >= 0.9
    )
    assert 0.9 <= ceiling["verdict_auroc"] <= 1 and 0.9 <= ceiling["eval/position_accuracy"] <= 1
    wandb_summary = leet(tmp_path / "run", "--summary")["summary"]
    assert {k: wandb_summary[f"ceiling/{k}"] for k in ceiling if k != "examples"} == pytest.approx(
        {k: v for k, v in ceiling.items() if k != "examples"}
    )


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6:
            raise KeyboardInterrupt


def test_an_interrupted_trial_resumes_from_its_checkpoint_in_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMQC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_app("train", [*TRIAL, "paths.output_dir=" + str(run_dir), "run_name=resume-test"])
    original_init = Trainer.__init__

    def with_interrupt(self, *a, **k):
        original_init(self, *a, **k)
        self.add_callback(_Interrupt())

    monkeypatch.setattr(Trainer, "__init__", with_interrupt)
    assert trial(cfg, validate(cfg), run_dir) == "interrupted"  # the command's own path, in-process
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["status"] == "interrupted" and first["step"] == 6
    monkeypatch.setattr(Trainer, "__init__", original_init)
    assert trial(cfg, validate(cfg), run_dir) == "completed"
    second = json.loads((run_dir / "summary.json").read_text())
    assert second["attempts"] == 2 and second["resumed_from"].endswith("checkpoint-4")
    assert second["wandb"]["id"] == first["wandb"]["id"]
    # best and baseline take in the first attempt's evaluations (steps 0 and 4), read back from disk
    rows = metrics(run_dir)
    assert {r["trainer/global_step"] for r in rows if "eval/exact_match" in r} == {0, 4, 8}
    assert second["baseline"]["step"] == 0 and second["best"]["step"] == best_step(rows, "eval/exact_match")
    step4 = next(r for r in rows if r["trainer/global_step"] == 4 and "eval/exact_match" in r)
    if second["best"]["step"] == 4:
        assert {k: second["best"][k] for k in step4 if k.startswith("eval/")} == {
            k: v for k, v in step4.items() if k.startswith("eval/")
        }
    steps = [r["trainer/global_step"] for r in metrics(run_dir) if "train/loss" in r]
    # the first attempt logged steps 2 and 4 and stopped inside step 6, before its log;
    # the second resumed from checkpoint 4 and logged 6 and 8
    assert steps == [2, 4, 6, 8]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[-1] for p in runs}) == 1, (
        "both attempts write to the same W&B run id"
    )


def test_training_changes_every_lora_parameter_and_no_frozen_one(tmp_path):
    """The recipe's own pieces (loader, adapters, collator, Trainer arguments), a few steps."""
    cfg = compose_app("train", ["data.train_size=16", "data.test_size=4"])
    dsd, _ = get_dataset(data_config(cfg), tmp_path / "data", num_workers=1, progress=False)
    set_seed(0)
    model, processor, family, _ = load(
        ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(tmp_path / "models"), "cpu"
    )
    model = adapt(model, family, LoraConfig(name="r8", r=8, alpha=16, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = training_arguments(
        TrainerConfig(max_steps=4, batch_size=4, lr=1e-2, warmup_ratio=0.0, logging_steps=1, save_steps=100),
        tmp_path / "run",
        "cpu",
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=dsd["train"],
        data_collator=Collator(processor, family, prompt_option("short"), train=True),
    ).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert changed == trainable


def test_loader_workers_persist_between_epochs_only_when_there_are_workers(tmp_path):
    """A small dataset's epochs are a few steps: restarting the workers each one would dominate."""
    base = dict(max_steps=4, batch_size=4, logging_steps=1, save_steps=100)
    assert (
        training_arguments(
            TrainerConfig(dataloader_workers=2, **base), tmp_path / "a", "cpu"
        ).dataloader_persistent_workers
        is True
    )
    assert (
        training_arguments(
            TrainerConfig(dataloader_workers=0, **base), tmp_path / "b", "cpu"
        ).dataloader_persistent_workers
        is False
    )
