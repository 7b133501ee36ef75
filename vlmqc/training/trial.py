"""One trial, top to bottom: data, model, the trainer (whose first act is the base model's
evaluation), training, the final evaluation, the save; every phase recorded by one Recorder.

    vlmqc train experiment=first_run                     # a model that learns, on a CPU, in under 2 minutes
    vlmqc train data=pair_round prompt=short lora=r8 image_size=224
    vlmqc train model.path=/ckpt/<checkpoint folder> image_size=native trainer.device=cuda
    vlmqc train logger=none trainer.max_steps=20         # no tracker, a quick smoke trial

The command (vlmqc/cli/train.py) validates the config once, takes the run folder's lock, readies
the folder (vlmqc/runs/resume.py) and calls ``run``, in this process or, for several GPUs, in
each rank that vlmqc/training/launch.py starts. The folder, ``outputs/runs/<overrides>``, holds
the checkpoints, the adapter (PEFT format), the records (``metrics.jsonl``, ``predictions/``,
``samples/``, ``summary.json``) and the W&B run. SIGTERM and Ctrl-C stop at a step end with a
checkpoint (vlmqc/training/signals.py); the record is written whatever happens.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PrinterCallback, set_seed

from vlmqc import console, features
from vlmqc.answers import PARSER_VERSION
from vlmqc.collate import Collator, sequence_lengths
from vlmqc.config import ConfigError, Preprocess
from vlmqc.data import get_dataset, report
from vlmqc.data.custom import CustomDataError
from vlmqc.data.layout import images as row_images
from vlmqc.devices import pick_device
from vlmqc.evaluation.scoring import chance, prior_answers
from vlmqc.metrics import chance_of
from vlmqc.models import adapt, load, parameter_counts
from vlmqc.runs.recorder import Recorder
from vlmqc.runs.resume import Plan
from vlmqc.training import gpus, preprocess
from vlmqc.training.arguments import training_arguments
from vlmqc.training.loss import trainer_class
from vlmqc.training.recording import RecordingCallback
from vlmqc.training.signals import Interrupted, Signals, StopOnSignal

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Data:
    train: object  # datasets.Dataset
    test: list[dict]  # the rows every evaluation answers (trainer.eval_limit of them, or all)
    test_dataset: object  # the same rows as a datasets.Dataset, for the Trainer's eval loss
    path: Path  # the cached dataset's folder
    sample_ids: list[str]  # the fixed test ids whose answers are logged as inference samples
    priors: dict  # the prior-only answers, learned from the train split's labels


def run(cfg: DictConfig, objs: dict, run_dir: Path, context: dict, plan: Plan) -> str:
    """The trial; returns its final status. ``objs`` are the validated groups (vlmqc.preflight),
    ``context`` the command line's overrides and sweep, ``plan`` how it starts (a fresh start, or
    the checkpoint it resumes). A config error found while running is recorded, then raised."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    recorder = Recorder(run_dir, enabled=rank == 0)  # one writer: rank 0
    started = begin(recorder, cfg, run_dir, context, plan)
    status, reason, step, trainer, callback, stopper = "failed", None, None, None, None, None
    signals = Signals().__enter__()  # SIGTERM / Ctrl-C: stop at a step end with a checkpoint
    try:
        t = objs["trainer"]
        set_seed(t.seed)
        device = pick_device(t.device)
        data = load_data(cfg, objs)
        model, processor, family, facts = load_model(cfg, objs, data, device, world, run_dir)
        start_recording(recorder, cfg, objs, context, facts, data, rank)
        stopper = StopOnSignal(signals)
        trainer, callback, cache = build_trainer(
            cfg, objs, run_dir, recorder, model, processor, family, data, device, world, facts, stopper, plan
        )
        recorder.facts(facts)
        signals.graceful = True
        trainer.train(resume_from_checkpoint=plan.checkpoint)  # the base model's evaluation first (trainer.eval_before)
        signals.graceful = False
        if stopper.step is not None:
            raise Interrupted(stopper.name)
        if callback.nonfinite_step is not None:
            raise NonFiniteLoss(f"non-finite training loss at step {callback.nonfinite_step}")
        if (
            callback.evaluated_step != trainer.state.global_step
        ):  # eval_every may have just done it (the same answer on every rank)
            trainer.evaluate()
        facts["vision_cache"] = features.facts(cache)
        recorder.facts(facts)
        if rank == 0:  # one writer: every rank holds the same weights (DDP), and two would write one folder at once
            save(model, processor, run_dir / ("model" if objs["lora"].full else "adapter"))
        status, step = "completed", trainer.state.global_step
        recorder.completed(cfg.sweep_metric, len(data.test))
    except (KeyboardInterrupt, Interrupted) as e:
        at = (
            stopper.step
            if stopper is not None and stopper.step is not None
            else (trainer.state.global_step if trainer is not None else None)
        )
        saved = (
            "; checkpoint saved, the same command resumes from it"
            if stopper is not None and stopper.step is not None
            else ""
        )
        name = e.name if isinstance(e, Interrupted) else "KeyboardInterrupt"
        status, step = "interrupted", at
        reason = (
            f"interrupted by {name} at step {at}{saved}" if at is not None else f"interrupted by {name} before training"
        )
    except NonFiniteLoss as e:
        status, reason, step = "failed", str(e), callback.nonfinite_step
    except (ConfigError, CustomDataError) as e:
        status, reason = "failed", str(e)
        raise
    except Exception as e:  # noqa: BLE001 - a trial's record must say why it failed, whatever it was
        status, reason = "failed", f"{type(e).__name__}: {e}"
        try:
            recorder.update(traceback="".join(traceback.format_exc().splitlines(keepends=True)[-25:]))
        except OSError as unwritten:  # a full disk: one line, not a traceback of the write that failed too
            log.error("trial %s failed: %s (and its record could not be written: %s)", cfg.run_name, reason, unwritten)
        else:
            log.exception("trial %s failed", cfg.run_name)
        if world > 1:
            # raised again, so this rank's process fails: the launcher then stops the other ranks, which
            # would otherwise wait for this one in their next collective, and reports this exception
            raise
    finally:
        signals.graceful = True  # a signal now only asks: the record is being written
        if step is None and trainer is not None:
            step = trainer.state.global_step
        recorder.close(status, reason, step, started)
        signals.__exit__()
    report_end(recorder, cfg.run_name, status, reason, started)
    return status


# --- the phases --------------------------------------------------------------------------------


def begin(recorder: Recorder, cfg: DictConfig, run_dir: Path, context: dict, plan: Plan) -> float:
    """The record says ``running`` and holds what a rerun is checked against, before anything can fail."""
    previous, resuming = recorder.summary, bool(cfg.trainer.resume)
    recorder.update(
        status="running",
        run_name=cfg.run_name,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        reason=None,
        step=None,
        traceback=None,
        attempts=int(previous.get("attempts", 0)) + 1 if resuming else 1,
        **context,
        config_hash=plan.config_hash,
        config=OmegaConf.to_container(cfg, resolve=True),
        resumed_from=plan.checkpoint,
        skipped_checkpoints=plan.skipped_checkpoints,
        dropped_records=plan.dropped,
        earlier_attempts=sorted((p.name for p in (run_dir / "attempts").glob("*") if p.name.isdigit()), key=int),
    )
    return time.time()


def load_data(cfg: DictConfig, objs: dict) -> Data:
    """The dataset (drawn and cached on first use), the test rows evaluations answer, the samples' ids."""
    t = objs["trainer"]
    dsd, path = get_dataset(objs["data"], cfg.paths.cache_dir, num_workers=cfg.num_workers)
    test = dsd["test"] if not t.eval_limit else dsd["test"].select(range(min(t.eval_limit, len(dsd["test"]))))
    sample_ids = [test[i]["id"] for i in report.pick(test, t.samples)] if t.samples else []
    # the prior-only answers come from the train split's labels (no image decoded)
    labels = [c for c in ("task", "verdict", "defects", "target", "answer") if c in dsd["train"].column_names]
    return Data(
        dsd["train"], list(test), test, path, sample_ids, prior_answers(list(dsd["train"].select_columns(labels)))
    )


def load_model(cfg: DictConfig, objs: dict, data: Data, device: str, world: int, run_dir: Path):
    """The model through its family, its adapters (or every weight freed), and the facts of what it sees."""
    t, layout = objs["trainer"], objs["data"].layout
    model, processor, family, model_path = load(objs["model"], objs["image_size"], cfg.paths.models_dir, device, layout)
    # seeded again here: the adapters' initial weights depend on trainer.seed alone, not on
    # whether load() had to build the tiny model first (which draws from the same generator)
    set_seed(t.seed)
    model = adapt(model, family, objs["lora"])
    if t.gradient_checkpointing:
        model.enable_input_require_grads()
    trainable, total = parameter_counts(model)
    # what the model really sees of one example, as the family's processor makes it
    first = data.test[0]
    seen = family.image_facts(
        processor, model, row_images(first, layout), Collator(processor, family, objs["prompt"], True, layout)([first])
    )
    facts = {
        "model_family": family.name,
        "processed_resolution": seen.processed_pixels[0],
        "image_tokens_per_sample": seen.image_tokens,
        "images": asdict(seen),
        "source_image_size": list(first["image"].size),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "dataset_hash": data.path.name.rsplit("-", 1)[-1],
        "dataset_path": str(data.path),
        "model_path": model_path,
        "git_commit": git_commit(),
        "device": device,
        "world_size": world,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # which GPUs a launcher gave this trial
        "effective_batch": t.effective_batch(world),
        "learning_rate": t.effective_lr(world),
        "sample_ids": data.sample_ids,
        "parser_version": PARSER_VERSION,
    }
    (h, w), (ph, pw) = seen.input_pixels[0], seen.processed_pixels[0]
    log.info(
        "%s",
        console.table(
            f"trial {cfg.run_name}",
            {
                "model": f"{family.name} from {model_path}, {trainable:,} of {total:,} parameters trained",
                "data": f"{objs['data'].name}: {len(data.train):,} train, {len(data.test):,} test ({data.path})",
                "images": f"{w}x{h} pixels in, {pw}x{ph} processed (width x height), {seen.image_tokens} image "
                f"tokens a sample",
                "training": f"{device}, batch {facts['effective_batch']}, lr {facts['learning_rate']:g}, {world} "
                f"process(es)",
                "run folder": str(run_dir),
            },
        ),
    )
    return model, processor, family, facts


def start_recording(
    recorder: Recorder, cfg: DictConfig, objs: dict, context: dict, facts: dict, data: Data, rank: int
) -> None:
    """W&B (resumed with the trial), the facts, the chance levels and the no-learning ceiling."""
    logger = objs["logger"]
    resume_id = (recorder.summary.get("wandb") or {}).get("id") if cfg.trainer.resume else None
    # a sweep's trials share a W&B group and carry their overrides as tags, for W&B's own views
    tags = [*logger.tags, *(o[:64] for o in context["overrides"])]  # W&B's tag limit is 64 characters
    resolved = OmegaConf.to_container(cfg, resolve=True)
    recorder.track(
        logger,
        cfg.run_name,
        {**resolved, "overrides": context["overrides"]},
        resume_id,
        logger.group or context["sweep"],
        tags,
    )
    recorder.facts(facts)
    # the ceiling: what a pixel-difference detector with no learning scores on the same test rows (pair and diff data)
    ceiling = report.pixel_ceiling(data.test, objs["data"], data.path) if rank == 0 else None
    recorder.levels(chance(data.test, data.priors), ceiling)
    recorder.update(config=resolved)


def build_trainer(
    cfg, objs, run_dir, recorder, model, processor, family, data: Data, device, world, facts, stopper, plan: Plan
):
    """transformers' Trainer with vlmqc's collator, callbacks and speed levers (each the same computation)."""
    t, layout, prompt = objs["trainer"], objs["data"].layout, objs["prompt"]
    callback = RecordingCallback(
        t, prompt, layout, recorder, processor, family, data.test, data.sample_ids, cfg.sweep_metric, stopper
    )
    args = training_arguments(t, run_dir, device, world, eval_on_start=t.eval_before and plan.checkpoint is None)
    # the frozen image path's features, once per image (vlmqc/features.py); None when off
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    cache = features.enable(
        model, family, processor, t.vision_cache, cfg.paths.features_dir, precision, device, t.vision_cache_memory_gb
    )
    image_keys = bool(cache and cache.active)
    train, test = data.train, data.test_dataset
    collator = Collator(processor, family, prompt, train=True, layout=layout, image_keys=image_keys)
    if t.group_by_length:  # the Trainer's length-grouped samplers (train and eval loss) read a length column
        train, test = (d.add_column("length", sequence_lengths(collator, d)) for d in (train, test))
    facts["preprocess"] = {"mode": t.preprocess.value}
    if t.preprocess is Preprocess.once:
        # rank 0 encodes (or finds the cache) first, the other ranks then load its cache
        with args.main_process_first(desc="preprocess"):
            extra = {c: train[c] for c in ("length",) if c in train.column_names}
            if (
                image_keys
            ):  # the encoded rows carry their images' feature-cache keys (the images are not decoded again per step)
                extra[features.KEY] = features.row_keys(train, layout)
            train, collator, facts["preprocess"] = preprocess.prepare(
                train,
                data.path,
                processor,
                family,
                prompt,
                layout,
                t.preprocess_pixels,
                args.bf16,
                num_workers=cfg.num_workers,
            )
            for column, values in extra.items():
                train = train.add_column(column, values)
    trainer_cls, loss_path = trainer_class(t.loss, model)
    facts["loss"] = (
        loss_path.value
    )  # the path that runs: answer_only falls back to full where the model cannot keep some logits
    callbacks = [
        callback,
        stopper,
        console.TrainingBar(t.effective_batch(world)),
        *([cache.callback()] if cache else []),
    ]
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train, eval_dataset=test, data_collator=collator, callbacks=callbacks
    )
    trainer.remove_callback(
        PrinterCallback
    )  # its {'loss': ...} dict every logging step: the bar shows them (vlmqc/console.py)
    facts["distributed_backend"] = gpus.distributed_backend()
    facts["vision_cache"] = features.facts(cache)  # whether it is used; its hits once trained
    if trainer.args.device.type == "cuda":  # the rank's own GPU, known once the Trainer has set it up
        facts["gpu"] = torch.cuda.get_device_name(trainer.args.device)
        facts["gpu_uuid"] = str(torch.cuda.get_device_properties(trainer.args.device).uuid)
    return trainer, callback, cache


def save(model, processor, folder: Path) -> None:
    """The adapter (PEFT) or the fully fine-tuned model, with the processor beside it."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def report_end(recorder: Recorder, run_name: str, status: str, reason: str | None, started: float) -> None:
    """One line: why it stopped, or what it reached against chance and where its record is."""
    if reason:
        log.error("trial %s %s: %s", run_name, status, reason)
        return
    final, levels = recorder.summary.get("final"), recorder.summary.get("chance")
    if status != "completed" or not final:
        return
    shown = ", ".join(
        f"{k[5:]} {v:.3f}" + (f" (chance {c[0]:.3f}, {c[1]})" if (c := chance_of(levels, k)) is not None else "")
        for k, v in final.items()
        if k.startswith("eval/") and k not in ("eval/loss", "eval/unparseable_rate")
    )
    log.info(
        "trial completed in %.0f s at step %s: %s; the record: %s",
        time.time() - started,
        final.get("step"),
        shown,
        recorder.records.summary_path,
    )


def git_commit() -> str | None:
    try:
        here = Path(__file__).parent
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=here, timeout=5
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None
