"""One trial: fine-tune a VLM on an inspection dataset, evaluate it by generation, record it.

    python -m vlmqc.train                                        # star data, tiny model, offline W&B
    python -m vlmqc.train data=pair_round prompt=short lora=r8 image_size=224
    python -m vlmqc.train model.path=/ckpt/<checkpoint folder> image_size=native trainer.device=cuda
    python -m vlmqc.train logger=none trainer.max_steps=20       # no tracker, a quick smoke trial

The trial reads top to bottom in ``run``: data -> model -> adapters -> evaluate the base model ->
train (transformers' Trainer: loop, precision, checkpoints, resume) -> evaluate -> save.
Its folder, ``outputs/runs/<overrides>``, holds the checkpoints, the adapter (PEFT format), the
records (``metrics.jsonl``, ``samples/``, ``summary.json``) and the W&B run, held by one process at
a time (vlmqc/lock.py). Running the same command again resumes an interrupted trial from its last
complete checkpoint, in the same W&B run, and refuses a changed config (vlmqc/resume.py); a
completed trial is not run twice (``trainer.resume=false`` starts a new attempt). SIGTERM and
Ctrl-C stop at a step end with a checkpoint (vlmqc/signals.py).
Exit status: 0 completed, 1 failed or interrupted (the reason is in summary.json), 2 bad config:
any config error, whether Hydra finds it composing (a misspelt key, a wrong type, an unknown
option) or a schema does (a value out of range, a missing folder), in a single run or in any
trial of a ``-m`` sweep, before any trial starts; the message names the key, on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import PrinterCallback, TrainerCallback, TrainingArguments, set_seed

from vlmqc import config as schema
from vlmqc import console, features, gpus, preprocess, resume
from vlmqc.collate import Collator, sequence_lengths
from vlmqc.config import ConfigError, Precision
from vlmqc.data import get_dataset, report
from vlmqc.data.custom import CustomDataError
from vlmqc.data.layout import images as row_images
from vlmqc.evaluate import chance, prior_answers, score
from vlmqc.lock import RunLock
from vlmqc.loss import trainer_class
from vlmqc.models import adapt, load, parameter_counts, random_checkpoint
from vlmqc.predict import predict_sharded
from vlmqc.prompts import PARSER_VERSION, instruction, render_answer
from vlmqc.records import PredictionRow, Records, Sample, chance_level, sample_image
from vlmqc.signals import Interrupted, Signals, StopOnSignal
from vlmqc.track import Tracker

log = logging.getLogger("vlmqc.train")


class NonFiniteLoss(RuntimeError):
    pass


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda': no CUDA device is visible")
    return name


class Trial(TrainerCallback):
    """Everything a trial records, hooked into the Trainer's events.

    - every log: ``train/…`` and ``eval/…`` names, throughput and peak GPU memory added, sent to
      the run folder and to W&B; a non-finite loss stops training;
    - every evaluation: generation on the test split, the inspection metrics, every prediction,
      the inference samples for the fixed test ids, and the summary's final / baseline / best,
      derived from metrics.jsonl so that a resumed trial's best includes the earlier attempts'.
    """

    def __init__(self, trainer_cfg, prompt, layout, records: Records, tracker: Tracker, processor, family, test_rows: list[dict], sample_ids: list[str], metric: str):
        self.t, self.prompt, self.layout, self.records, self.tracker = trainer_cfg, prompt, layout, records, tracker
        self.processor, self.family = processor, family
        self.test_rows, self.sample_ids, self.metric = test_rows, set(sample_ids), metric
        self.nonfinite_step: int | None = None
        self.evaluated_step: int | None = None
        self._last = None  # (time, step, tokens) at the previous training log, for throughput

    def _emit(self, metrics: dict, step: int) -> None:
        self.records.log(metrics, step)
        self.tracker.log(metrics, step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        # every rank sees the same (all-reduced) loss and stops on it: one rank stopping alone would hang the others
        if "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.nonfinite_step = state.global_step
            control.should_training_stop = True
        if not state.is_world_process_zero:
            return
        metrics = {}
        for k, v in logs.items():
            if k.startswith("eval_"):
                metrics[f"eval/{k[5:]}"] = v
            elif k in ("loss", "learning_rate", "grad_norm", "epoch"):
                metrics[f"train/{k}"] = v
            elif k == "train_loss":  # the end-of-training summary: the mean over all steps
                metrics["train/mean_loss"] = v
            elif k.startswith("train_"):  # and runtime, samples per second, ... over the whole run, warm-up included:
                metrics[f"train/overall_{k[6:]}"] = v  # not to be confused with the per-interval train/samples_per_second
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            if self._last is not None and now > self._last[0]:
                dt, steps = now - self._last[0], state.global_step - self._last[1]
                samples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                metrics["train/samples_per_second"] = samples / dt
                metrics["train/tokens_per_second"] = (tokens - self._last[2]) / dt
            self._last = (now, state.global_step, tokens)
            if torch.cuda.is_available():
                metrics["train/peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if metrics:
            self._emit(metrics, state.global_step)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        preds = predict_sharded(
            model, self.processor, self.family, self.prompt, self.test_rows, self.t.eval_batch_size, self.t.max_new_tokens, self.layout, self.t.eval_workers
        )
        self.evaluated_step = state.global_step  # on every rank: whether to evaluate again must not differ between ranks
        if not state.is_world_process_zero:
            return
        step, parsed = state.global_step, [p["parsed"] for p in preds]
        scores = {f"eval/{k}": v for k, v in score(self.test_rows, parsed).items()}
        self._emit(scores, step)  # eval/loss was logged by on_log, which the Trainer calls first
        self.records.predictions([PredictionRow.of(row, p["text"], p["parsed"]) for row, p in zip(self.test_rows, preds, strict=True)], step)
        samples, images = [], {}
        for row, pred in zip(self.test_rows, preds, strict=True):
            if row["id"] in self.sample_ids:
                correct = score([row], [pred["parsed"]]).get("exact_match") == 1.0
                samples.append(Sample(id=row["id"], step=step, image=sample_image(row["id"]), prompt=instruction(self.prompt, row["task"], len(row_images(row, self.layout))),
                                      truth=render_answer(self.prompt, row), prediction=pred["text"], correct=correct))
                images[row["id"]] = row["image"]
        self.records.samples(samples, images, step)
        self.tracker.samples(samples, images, step)
        self.records.update(**self.records.standing(self.metric, len(self.test_rows)))
        if (self.records.summary.get("diagnosis") or {}).get("plateau"):
            d = self.records.summary["diagnosis"]
            log.warning("step %d: the training loss is flat (%.1f%% fall over the last third) while %s=%.3f is at chance (%.3f): the plateau; "
                        "train longer or with warm-up (experiments/LOG.md)", step, 100 * d["loss_change"], d["metric"], d["value"], d["chance"])
        log.info("step %d: %s", state.global_step, ", ".join(f"{k[5:]}={v:.3f}" for k, v in sorted(scores.items())))


# transformers renamed gradient_checkpointing to activation_checkpointing (5.2x); 5.17 knows only the old name
CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"


def training_arguments(t, run_dir: Path, device: str, world_size: int = 1, eval_on_start: bool = False) -> TrainingArguments:
    precision = Precision(t.precision)
    if precision == Precision.auto:
        precision = Precision.bf16 if device == "cuda" and torch.cuda.is_bf16_supported() else Precision.fp32
    if device == "cpu" and precision != Precision.fp32:
        raise ConfigError(f"trainer.precision={precision.value}: mixed precision needs a GPU here; use fp32 or auto")
    if t.liger:
        import importlib.util

        if device != "cuda":
            raise ConfigError("trainer.liger=true: Liger's Triton kernels need a CUDA GPU; this trial runs on the CPU")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("trainer.liger=true: the liger-kernel package is not installed (pip install liger-kernel)")
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.effective_lr(world_size),
        lr_scheduler_type=t.lr_schedule,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a fraction of all steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == Precision.bf16,
        fp16=precision == Precision.fp16,
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if device == "cuda" else "gloo") if "LOCAL_RANK" in os.environ else None,
        # the base model's evaluation: inside train(), after the model is wrapped for DDP. Calling
        # trainer.evaluate() before train() instead makes accelerate mark the model prepared, and
        # train() then skips the DDP wrapper: the ranks would not synchronise their gradients.
        eval_on_start=eval_on_start,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must reach the log, where the trial stops on it
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_every else "no",
        eval_steps=t.eval_every or None,
        # DDP's search for unused parameters costs a graph traversal every step; adapters and
        # unfrozen layers are all used, so it is off unless a model needs it
        ddp_find_unused_parameters=t.ddp_find_unused_parameters,
        dataloader_num_workers=t.dataloader_workers,
        # kept between epochs: 500 examples at batch 64 are an epoch of 8 steps, and starting the
        # workers again every epoch would cost more than the steps themselves
        dataloader_persistent_workers=t.dataloader_workers > 0,
        **{CHECKPOINTING: t.gradient_checkpointing},
        torch_compile=t.compile,
        use_liger_kernel=t.liger,  # transformers patches the model instance with liger's kernels (checked above)
        torch_compile_mode=t.compile_mode if t.compile else None,  # a mode alone would turn compiling on
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # the collator needs the raw rows: image, labels, task
        label_names=["labels"],
        report_to="none",  # tracking goes through Trial, so the run folder and W&B get the same stream
        disable_tqdm=True,
    )


def sweep_context() -> dict:
    """The command line's overrides, and the sweep this trial belongs to (None outside a multirun)."""
    if not HydraConfig.initialized():
        return {"overrides": [], "sweep": None}
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra")]
    sweep = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return {"overrides": overrides, "sweep": sweep}


def run(cfg: DictConfig, run_dir: Path, context: dict | None = None, plan: resume.Plan | None = None) -> str:
    """The trial; returns its final status. Its record is written whatever happens, a config
    error included (which is raised again after being recorded).

    ``plan``: how it starts (vlmqc/resume.py), when the elastic launcher's parent has already
    checked and readied the folder; else decided here (refusing a changed config, before any write).
    A config error is raised before the run folder is touched.
    """
    objs = schema.validate(cfg)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan or resume.prepare(cfg, run_dir, write=rank == 0)
    records = Records(run_dir, enabled=rank == 0)  # one writer: rank 0
    previous = records.summary
    resuming = bool(cfg.trainer.resume)
    if resuming and previous.get("status") == "completed":
        log.info("%s already completed (%s); trainer.resume=false runs it again", cfg.run_name, records.summary_path)
        return "completed"
    context = context if context is not None else sweep_context()
    started = time.time()
    records.update(status="running", run_name=cfg.run_name, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reason=None, step=None, traceback=None,
                   attempts=int(previous.get("attempts", 0)) + 1 if resuming else 1, **context,
                   # what a later rerun is checked against, written before anything can fail
                   config_hash=plan.config_hash, config=OmegaConf.to_container(cfg, resolve=True),
                   resumed_from=plan.checkpoint, skipped_checkpoints=plan.skipped_checkpoints, dropped_records=plan.dropped,
                   earlier_attempts=sorted((p.name for p in (run_dir / "attempts").glob("*") if p.name.isdigit()), key=int))
    tracker = None
    status, reason, step = "failed", None, None
    trainer = None
    signals = Signals().__enter__()  # SIGTERM / Ctrl-C: stop at a step end with a checkpoint (vlmqc/signals.py)
    stopper = StopOnSignal(signals)
    try:
        data_cfg = objs["data"]
        t = objs["trainer"]
        checkpoint = plan.checkpoint
        resume_id = (previous.get("wandb") or {}).get("id") if resuming else None
        set_seed(t.seed)
        device = pick_device(t.device)
        dsd, data_path = get_dataset(data_cfg, cfg.paths.cache_dir, num_workers=cfg.num_workers)
        test = dsd["test"] if not t.eval_limit else dsd["test"].select(range(min(t.eval_limit, len(dsd["test"]))))
        test_rows = list(test)
        sample_ids = [test[i]["id"] for i in report.pick(test, t.samples)] if t.samples else []

        model, processor, family, model_path = load(objs["model"], objs["image_size"], cfg.paths.models_dir, device, data_cfg.layout)
        # seeded again here: the adapters' initial weights depend on trainer.seed alone, not on
        # whether load() had to build the tiny model first (which draws from the same generator)
        set_seed(t.seed)
        model = adapt(model, family, objs["lora"])
        if t.gradient_checkpointing:
            model.enable_input_require_grads()
        trainable, total = parameter_counts(model)
        # what the model really sees of one example, as the family's processor makes it
        seen = family.image_facts(processor, model, row_images(test_rows[0], data_cfg.layout), Collator(processor, family, objs["prompt"], True, data_cfg.layout)([test_rows[0]]))
        facts = {
            "model_family": family.name,
            "processed_resolution": seen.processed_pixels[0],
            "image_tokens_per_sample": seen.image_tokens,
            "images": asdict(seen),
            "source_image_size": list(test_rows[0]["image"].size),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "dataset_hash": data_path.name.rsplit("-", 1)[-1],
            "dataset_path": str(data_path),
            "model_path": model_path,
            "git_commit": git_commit(),
            "device": device,
            "world_size": world,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # which GPUs a launcher gave this trial
            "effective_batch": t.effective_batch(world),
            "learning_rate": t.effective_lr(world),
            "sample_ids": sample_ids,
            "parser_version": PARSER_VERSION,
        }
        log.info("%s", console.table(f"trial {cfg.run_name}", {
            "model": f"{family.name} from {model_path}, {trainable:,} of {total:,} parameters trained",
            "data": f"{data_cfg.name}: {len(dsd['train']):,} train, {len(test_rows):,} test ({data_path})",
            "images": f"{seen.input_pixels[0][1]}x{seen.input_pixels[0][0]} pixels in, {seen.processed_pixels[0][1]}x{seen.processed_pixels[0][0]} processed (width x height), {seen.image_tokens} image tokens a sample",
            "training": f"{device}, batch {facts['effective_batch']}, lr {facts['learning_rate']:g}, {world} process(es)",
            "run folder": str(run_dir),
        }))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        # a sweep's trials share a W&B group and carry their overrides as tags, for W&B's own views
        logger = objs["logger"]
        group = logger.group or context["sweep"]
        tags = [*logger.tags, *(o[:64] for o in context["overrides"])]  # W&B's tag limit is 64 characters
        tracker = Tracker(logger, run_dir, cfg.run_name, {**resolved, "overrides": context["overrides"]}, resume_id, group=group, tags=tags, enabled=rank == 0)
        tracker.config({"facts": facts})
        # chance levels: the prior-only answer learned from the train split's labels (images not decoded)
        levels = chance(test_rows, prior_answers(list(dsd["train"].select_columns([c for c in ("task", "verdict", "defects", "target", "answer") if c in dsd["train"].column_names]))))
        tracker.summary({f"chance/{k}": v for k, v in levels["prior"].items()} | {f"chance/uniform/{k}": v for k, v in levels["uniform"].items()})
        # the ceiling: what a pixel-difference detector with no learning scores on the same test rows (pair and diff data)
        ceiling = report.pixel_ceiling(test_rows, data_cfg, data_path) if rank == 0 else None
        if ceiling:
            tracker.summary({f"ceiling/{k}": v for k, v in ceiling.items() if k != "examples"})
        records.update(facts=facts, chance=levels, ceiling=ceiling, config=resolved, wandb={"id": tracker.id, "dir": tracker.dir, "mode": objs["logger"].mode} if tracker.id else None)

        trial = Trial(t, objs["prompt"], data_cfg.layout, records, tracker, processor, family, test_rows, sample_ids, cfg.sweep_metric)
        args = training_arguments(t, run_dir, device, world, eval_on_start=t.eval_before and checkpoint is None)
        # the frozen image path's features, once per image (vlmqc/features.py); None when off
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        cache = features.enable(model, family, processor, t.vision_cache, cfg.paths.features_dir, precision, device, t.vision_cache_memory_gb)
        image_keys = bool(cache and cache.active)
        train_data, eval_data = dsd["train"], test
        collator = Collator(processor, family, objs["prompt"], train=True, layout=data_cfg.layout, image_keys=image_keys)
        if t.group_by_length:  # the Trainer's length-grouped samplers (train and eval loss) read a length column
            train_data, eval_data = (d.add_column("length", sequence_lengths(collator, d)) for d in (train_data, eval_data))
        facts["preprocess"] = {"mode": t.preprocess.value}
        if t.preprocess is schema.Preprocess.once:
            # rank 0 encodes (or finds the cache) first, the other ranks then load its cache
            with args.main_process_first(desc="preprocess"):
                extra = {c: train_data[c] for c in ("length",) if c in train_data.column_names}
                if image_keys:  # the encoded rows carry their images' feature-cache keys (the images are not decoded again per step)
                    extra[features.KEY] = features.row_keys(train_data, data_cfg.layout)
                train_data, collator, facts["preprocess"] = preprocess.prepare(
                    train_data, data_path, processor, family, objs["prompt"], data_cfg.layout, t.preprocess_pixels, args.bf16, num_workers=cfg.num_workers
                )
                for column, values in extra.items():
                    train_data = train_data.add_column(column, values)
        trainer_cls, loss_path = trainer_class(t.loss, model)
        facts["loss"] = loss_path.value  # the path that runs: answer_only falls back to full where the model cannot keep some logits
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=train_data,
            eval_dataset=eval_data,
            data_collator=collator,
            callbacks=[trial, stopper, console.TrainingBar(t.effective_batch(world)), *([cache.callback()] if cache else [])],
        )
        trainer.remove_callback(PrinterCallback)  # its {'loss': ...} dict every logging step: the bar shows them (vlmqc/console.py)
        facts["distributed_backend"] = gpus.distributed_backend()
        facts["vision_cache"] = features.facts(cache)  # whether it is used; its hits once trained
        if trainer.args.device.type == "cuda":  # the rank's own GPU, known once the Trainer has set it up
            facts["gpu"] = torch.cuda.get_device_name(trainer.args.device)
            facts["gpu_uuid"] = str(torch.cuda.get_device_properties(trainer.args.device).uuid)
        records.update(facts=facts)
        tracker.config({"facts": facts})
        signals.graceful = True
        trainer.train(resume_from_checkpoint=checkpoint)
        signals.graceful = False
        if stopper.step is not None:
            raise Interrupted(stopper.name)
        if trial.nonfinite_step is not None:
            raise NonFiniteLoss(f"non-finite training loss at step {trial.nonfinite_step}")
        if trial.evaluated_step != trainer.state.global_step:  # eval_every may have just done it (the same answer on every rank)
            trainer.evaluate()
        facts["vision_cache"] = features.facts(cache)
        records.update(facts=facts)
        if rank == 0:  # one writer: every rank holds the same weights (DDP), and two would write one folder at once
            model.save_pretrained(run_dir / ("model" if objs["lora"].full else "adapter"))
            processor.save_pretrained(run_dir / ("model" if objs["lora"].full else "adapter"))
        status, step = "completed", trainer.state.global_step
        records.update(**records.standing(cfg.sweep_metric, len(test_rows)))
        tracker.summary({"status": status, **{f"{part}/{k}": v for part in ("best", "baseline", "diagnosis") for k, v in (records.summary[part] or {}).items()}})
    except (KeyboardInterrupt, Interrupted) as e:
        at = stopper.step if stopper.step is not None else (trainer.state.global_step if trainer is not None else None)
        saved = "; checkpoint saved, the same command resumes from it" if stopper.step is not None else ""
        name = e.name if isinstance(e, Interrupted) else "KeyboardInterrupt"
        status, step = "interrupted", at
        reason = f"interrupted by {name} at step {at}{saved}" if at is not None else f"interrupted by {name} before training"
    except NonFiniteLoss as e:
        status, reason, step = "failed", str(e), trial.nonfinite_step
    except (ConfigError, CustomDataError) as e:
        status, reason = "failed", str(e)
        raise
    except Exception as e:  # noqa: BLE001 - a trial's record must say why it failed, whatever it was
        status, reason = "failed", f"{type(e).__name__}: {e}"
        records.update(traceback="".join(traceback.format_exc().splitlines(keepends=True)[-25:]))
        log.exception("trial %s failed", cfg.run_name)
        if world > 1:
            # raised again, so this rank's process fails: the launcher then stops the other ranks, which
            # would otherwise wait for this one in their next collective, and reports this exception
            raise
    finally:
        signals.graceful = True  # a signal now only asks: the record is being written
        if step is None and trainer is not None:
            step = trainer.state.global_step
        records.update(status=status, reason=reason, step=step, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), runtime_seconds=round(time.time() - started, 2))
        if tracker is not None:
            tracker.summary({"status": status, "reason": reason})
            tracker.finish(status)
        signals.__exit__()
    if reason:
        log.error("trial %s %s: %s", cfg.run_name, status, reason)
    elif status == "completed" and records.summary.get("final"):
        final, levels = records.summary["final"], records.summary.get("chance")
        shown = ", ".join(f"{k[5:]} {v:.3f}" + (f" (chance {c:.3f})" if (c := chance_level(levels, k)) is not None else "")
                          for k, v in final.items() if k.startswith("eval/") and k != "eval/loss" and k != "eval/unparseable_rate")
        log.info("trial completed in %.0f s at step %s: %s; the record: %s", time.time() - started, final.get("step"), shown, records.summary_path)
    return status


def _worker(overrides: list[str], run_dir: str, run_name: str, context: dict, plan: resume.Plan) -> str:
    """One rank of a multi-GPU trial, in a process started by torch's elastic launcher.

    The config is composed again from the same overrides with Hydra's compose API, so every
    schema applies as in the parent, and ``run`` validates it before anything else; the run folder
    and name are the parent's (one folder for all ranks).
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).resolve().parent.parent / "conf")):
        cfg = compose("train", overrides=overrides)
    cfg.paths.output_dir, cfg.run_name = run_dir, run_name
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][rank " + os.environ.get("RANK", "?") + "][%(name)s][%(levelname)s] - %(message)s")
    console.setup(cfg.quiet)
    return run(cfg, Path(run_dir), context, plan)  # the parent's Hydra context and plan: workers have none


def rendezvous(t) -> tuple[int, str, str, bool]:
    """(nodes, rendezvous endpoint, run id, whether this is the first node) for the elastic launcher.

    One node: a free local port, as ``torchrun --standalone``. Several: this process is one task
    per node of a Slurm job started by Hydra's submitit launcher; submitit's job environment names
    the nodes, and the first one hosts the c10d rendezvous.
    """
    if t.nodes == 1:
        return 1, "localhost:0", f"vlmqc-{os.getpid()}-{int(time.time())}", True
    import submitit

    try:
        job = submitit.JobEnvironment()
    except RuntimeError as e:
        raise ConfigError(f"trainer.nodes={t.nodes}: a multi-node trial runs as one task per node of a Slurm job (hydra/launcher=slurm_multinode); {e}") from e
    if job.num_nodes != t.nodes or job.num_tasks != t.nodes:
        raise ConfigError(
            f"trainer.nodes={t.nodes}: this Slurm job has {job.num_nodes} node(s) and {job.num_tasks} task(s); it needs one task on each of {t.nodes} nodes "
            "(hydra.launcher.nodes and tasks_per_node=1; hydra/launcher=slurm_multinode sets them from trainer.nodes)"
        )
    return t.nodes, f"{job.hostnames[0]}:{t.rdzv_port}", f"vlmqc-{job.job_id}", job.node == 0


def launch(cfg: DictConfig, run_dir: Path, devices: int) -> str:
    """Run the trial on ``devices`` processes (DDP) per node with PyTorch's elastic launcher.

    This process holds the run folder's lock (on the first node) and readies the folder
    (vlmqc/resume.py) before any rank starts, so a changed config exits 2 here. The dataset and a
    random model (tiny or not) are prepared here first, so that the workers only load them.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    objs = schema.validate(cfg)  # here, not in the ranks: a bad value must not start (and fail) them all
    nodes, endpoint, run_id, first_node = rendezvous(objs["trainer"])
    with RunLock(run_dir) if first_node else contextlib.nullcontext():
        plan = resume.prepare(cfg, run_dir, write=first_node)
        records = Records(run_dir, enabled=first_node)
        if cfg.trainer.resume and records.summary.get("status") == "completed":
            log.info("%s already completed (%s); trainer.resume=false runs it again", cfg.run_name, records.summary_path)
            return "completed"
        get_dataset(objs["data"], cfg.paths.cache_dir, num_workers=cfg.num_workers)
        if objs["model"].path is None:
            random_checkpoint(objs["model"], objs["image_size"].size, cfg.paths.models_dir)
        if pick_device(objs["trainer"].device) == "cuda" and torch.cuda.device_count() < devices:
            raise ConfigError(f"trainer.devices={devices}: only {torch.cuda.device_count()} GPU(s) are visible")
        context = sweep_context()
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra")]
        # each rank gets its share of the CPU cores for its threads (torchrun sets 1): several ranks
        # each running a thread per core oversubscribe the CPU, and the collators' work slows down
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
        config = LaunchConfig(
            min_nodes=nodes,
            max_nodes=nodes,
            nproc_per_node=devices,
            run_id=run_id,
            rdzv_backend="c10d",
            rdzv_endpoint=endpoint,
            max_restarts=0,
            monitor_interval=1,
            start_method="spawn",
        )
        # this attempt's status and reason start empty: what the ranks write below is theirs, not an earlier attempt's
        records.update(status="running", reason=None)
        try:
            results = elastic_launch(config, _worker)(overrides, str(run_dir), cfg.run_name, context, plan)
        except SignalException as e:
            # the launcher passed the signal on to the ranks, which stop at a step end and record it
            # (vlmqc/signals.py); it kills those that take longer than its shutdown timeout
            return _launch_ended(records, "interrupted", f"interrupted by {e.sigval.name} (the launcher's); the ranks did not record stopping")
        except Exception as e:  # a rank failed: its own reason, when it wrote one, stays in the record
            return _launch_ended(records, "failed", f"a worker process failed: {_first_failure(e)}")
    # the global ranks' results; on a later node, rank 0's is not among them, but its own are the same
    return results.get(0, next(iter(results.values())))


def _first_failure(e: Exception) -> str:
    """The first failed rank's own exception, as torch's elastic launcher recorded it."""
    try:
        rank, failure = e.get_first_failure()  # ChildFailedError
        message = failure.message.get("message", failure.message) if isinstance(failure.message, dict) else failure.message
        return f"rank {rank}: {str(message)[:2000]}"
    except AttributeError:
        return f"{type(e).__name__}: {str(e)[:2000]}"


def _launch_ended(records: Records, status: str, reason: str) -> str:
    """The launcher's account of a trial whose ranks ended abnormally, unless rank 0 wrote its own."""
    fresh = Records(records.dir, enabled=records.enabled)  # what the ranks wrote, not this process's copy from before
    if fresh.summary.get("status") in ("failed", "interrupted") and fresh.summary.get("reason"):
        return fresh.summary["status"]
    fresh.update(status=status, reason=reason)
    return status


def objective(run_dir: Path, metric: str) -> float:
    """The value a metric-driven sweeper (Optuna) optimises: the trial's final ``metric``;
    NaN for a trial that failed, which Optuna records as a failed trial."""
    summary = Records(run_dir).summary
    if summary.get("status") != "completed":
        return float("nan")
    return float((summary.get("final") or {}).get(metric, float("nan")))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        schema.validate(cfg)  # before a GPU is claimed or the run folder's record is touched
        console.setup(cfg.quiet)
        devices = int(cfg.trainer.devices)
        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and cfg.trainer.device != "cpu" and gpus.visible():
            gpus.claim(devices)  # parallel trials on one machine: each its own GPUs (vlmqc/gpus.py)
        # under torchrun (LOCAL_RANK set) this process already is one rank; else start the ranks here
        elastic = (devices > 1 or int(cfg.trainer.nodes) > 1 or bool(cfg.trainer.elastic)) and "LOCAL_RANK" not in os.environ
        if elastic:
            status = launch(cfg, run_dir, devices)  # which holds the run folder's lock
        else:
            # one writer per run folder (vlmqc/lock.py); under torchrun, the global rank 0 for all ranks
            with RunLock(run_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():
                status = run(cfg, run_dir)
    except (ConfigError, CustomDataError) as e:
        log.error("%s", e)
        if not multirun:
            sys.exit(2)
        status = "failed"
    if multirun and status == "interrupted":
        # a signal stops the sweep, not just this trial: Hydra's launcher would go on to the next one
        log.error("sweep stopped: trial %s was interrupted", cfg.run_name)
        raise SystemExit(1)
    if multirun:  # a failed trial must not stop the sweep: vlmqc.sweep reports it at the end
        return objective(run_dir, cfg.sweep_metric)
    if status != "completed":
        sys.exit(1)
    return None


def cli() -> None:
    """``python -m vlmqc.train``: a config error exits 2 naming the key, before any trial starts."""
    schema.run_checked("train", main)


if __name__ == "__main__":
    cli()
