"""One trial: fine-tune a VLM on an inspection dataset, evaluate it by generation, record it.

    python -m vlmqc.train                                        # star data, tiny model, offline W&B
    python -m vlmqc.train data=pair_round prompt=short lora=r8 image_size=224
    python -m vlmqc.train model=tiny model.path=/ckpt/llava-1.5-7b-hf image_size=native trainer.device=cuda
    python -m vlmqc.train logger=none trainer.max_steps=20       # no tracker, a quick smoke trial

The trial reads top to bottom in ``run``: data -> model -> adapters -> evaluate the base model ->
train (transformers' Trainer: loop, precision, checkpoints, resume) -> evaluate -> save.
Its folder, ``outputs/runs/<overrides>``, holds the checkpoints, the adapter (PEFT format), the
records (``metrics.jsonl``, ``samples/``, ``summary.json``) and the W&B run. Running the same
command again resumes an interrupted trial from its last checkpoint, in the same W&B run; a
completed trial is not run twice (``trainer.resume=false`` starts over).
Exit status: 0 completed, 1 failed or interrupted (the reason is in summary.json), 2 bad config.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from vlmqc import config as schema
from vlmqc import gpus
from vlmqc.collate import Collator
from vlmqc.config import ConfigError, Precision
from vlmqc.data import get_dataset, report
from vlmqc.data.custom import CustomDataError
from vlmqc.evaluate import score
from vlmqc.model import adapt, load, parameter_counts, processed_resolution, random_checkpoint
from vlmqc.predict import predict_sharded
from vlmqc.prompts import instruction, render_answer
from vlmqc.track import Records, Tracker

log = logging.getLogger("vlmqc.train")
HIGHER_IS_BETTER = ("verdict_accuracy", "defect_recall", "position_accuracy", "defect_type_accuracy", "exact_match")


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
    - every evaluation: generation on the test split, the inspection metrics, and the inference
      samples for the fixed test ids.
    """

    def __init__(self, trainer_cfg, prompt, records: Records, tracker: Tracker, processor, test_rows: list[dict], sample_ids: list[str]):
        self.t, self.prompt, self.records, self.tracker, self.processor = trainer_cfg, prompt, records, tracker, processor
        self.test_rows, self.sample_ids = test_rows, set(sample_ids)
        self.nonfinite_step: int | None = None
        self.final: dict = {}
        self.evaluated_step: int | None = None
        self.best: dict = dict(records.summary.get("best", {}))
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
        preds = predict_sharded(model, self.processor, self.prompt, self.test_rows, self.t.eval_batch_size, self.t.max_new_tokens)
        self.evaluated_step = state.global_step  # on every rank: whether to evaluate again must not differ between ranks
        if not state.is_world_process_zero:
            return
        scores = {f"eval/{k}": v for k, v in score(self.test_rows, [p["parsed"] for p in preds]).items()}
        if metrics and "eval_loss" in metrics:
            scores["eval/loss"] = metrics["eval_loss"]
        self._emit({k: v for k, v in scores.items() if k != "eval/loss"}, state.global_step)
        self.final = {**scores, "step": state.global_step}
        for k, v in scores.items():
            name = k.split("/", 1)[1]
            better = max if name in HIGHER_IS_BETTER else min
            if name in HIGHER_IS_BETTER or name in ("loss", "escape_rate", "false_reject_rate", "unparseable_rate"):
                self.best[k] = better(self.best.get(k, v), v)
        self.records.predictions(
            [
                {"id": row["id"], "task": row["task"], "verdict": row["verdict"], "defects": row["defects"], "target": row["target"], "prediction": pred["text"],
                 "parsed": {"verdict": pred["parsed"].verdict, "defects": [list(d) for d in pred["parsed"].defects], "target": pred["parsed"].target, "ok": pred["parsed"].ok}}
                for row, pred in zip(self.test_rows, preds, strict=True)
            ],
            state.global_step,
        )
        rows = []
        for row, pred in zip(self.test_rows, preds, strict=True):
            if row["id"] in self.sample_ids:
                truth = render_answer(self.prompt, row)
                one = score([row], [pred["parsed"]])
                correct = bool(one.get("exact_match", 0.0) == 1.0)
                rows.append({"id": row["id"], "image": row["image"], "prompt": instruction(self.prompt, row["task"]), "truth": truth, "prediction": pred["text"], "correct": correct})
        self.records.samples(rows, state.global_step)
        self.tracker.samples(rows, state.global_step)
        log.info("step %d: %s", state.global_step, ", ".join(f"{k}={v:.3f}" for k, v in sorted(scores.items())))


# transformers renamed gradient_checkpointing to activation_checkpointing (5.2x); 5.17 knows only the old name
CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient_checkpointing"


def training_arguments(t, run_dir: Path, device: str, world_size: int = 1, eval_on_start: bool = False) -> TrainingArguments:
    precision = Precision(t.precision)
    if precision == Precision.auto:
        precision = Precision.bf16 if device == "cuda" and torch.cuda.is_bf16_supported() else Precision.fp32
    if device == "cpu" and precision != Precision.fp32:
        raise ConfigError(f"trainer.precision={precision.value}: mixed precision needs a GPU here; use fp32 or auto")
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


def run(cfg: DictConfig, run_dir: Path, context: dict | None = None) -> str:
    """The trial; returns its final status. Its record is written whatever happens, a config
    error included (which is raised again after being recorded)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    records = Records(run_dir, enabled=rank == 0)  # one writer: rank 0
    previous = records.summary
    resume = bool(cfg.trainer.resume)
    if resume and previous.get("status") == "completed":
        log.info("%s already completed (%s); trainer.resume=false runs it again", cfg.run_name, records.summary_path)
        return "completed"
    context = context if context is not None else sweep_context()
    started = time.time()
    records.update(status="running", run_name=cfg.run_name, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reason=None, step=None, traceback=None,
                   attempts=int(previous.get("attempts", 0)) + 1 if resume else 1, **context)
    tracker = None
    status, reason, step = "failed", None, None
    trainer = None
    try:
        objs = {k: schema.to_object(cfg[k], k) for k in ("model", "prompt", "lora", "image_size", "trainer", "logger")}
        data_cfg = schema.data_config(cfg)
        t = objs["trainer"]
        checkpoint = get_last_checkpoint(str(run_dir / "checkpoints")) if resume and (run_dir / "checkpoints").is_dir() else None
        resume_id = (previous.get("wandb") or {}).get("id") if resume else None
        records.update(resumed_from=checkpoint)
        set_seed(t.seed)
        device = pick_device(t.device)
        dsd, data_path = get_dataset(data_cfg, cfg.paths.cache_dir, num_workers=cfg.num_workers)
        test = dsd["test"] if not t.eval_limit else dsd["test"].select(range(min(t.eval_limit, len(dsd["test"]))))
        test_rows = list(test)
        sample_ids = [test[i]["id"] for i in report.pick(test, t.samples)] if t.samples else []

        model, processor, model_path = load(objs["model"], objs["image_size"], cfg.paths.models_dir, device)
        # seeded again here: the adapters' initial weights depend on trainer.seed alone, not on
        # whether load() had to build the tiny model first (which draws from the same generator)
        set_seed(t.seed)
        model = adapt(model, objs["lora"])
        if t.gradient_checkpointing:
            model.enable_input_require_grads()
        trainable, total = parameter_counts(model)
        probe = Collator(processor, objs["prompt"], train=True)([test_rows[0]])
        facts = {
            "processed_resolution": processed_resolution(model, probe),
            "image_tokens_per_sample": int((probe["input_ids"] == model.config.image_token_id).sum()) if hasattr(model.config, "image_token_id") else None,
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
        }
        log.info("trial %s: %s", cfg.run_name, facts)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        # a sweep's trials share a W&B group and carry their overrides as tags, for W&B's own views
        logger = objs["logger"]
        group = logger.group or context["sweep"]
        tags = [*logger.tags, *(o[:64] for o in context["overrides"])]  # W&B's tag limit is 64 characters
        tracker = Tracker(logger, run_dir, cfg.run_name, {**resolved, "overrides": context["overrides"]}, resume_id, group=group, tags=tags, enabled=rank == 0)
        tracker.config({"facts": facts})
        records.update(facts=facts, config=resolved, wandb={"id": tracker.id, "dir": tracker.dir, "mode": objs["logger"].mode} if tracker.id else None)

        trial = Trial(t, objs["prompt"], records, tracker, processor, test_rows, sample_ids)
        trainer = Trainer(
            model=model,
            args=training_arguments(t, run_dir, device, world, eval_on_start=t.eval_before and checkpoint is None),
            train_dataset=dsd["train"],
            eval_dataset=test,
            data_collator=Collator(processor, objs["prompt"], train=True),
            callbacks=[trial],
        )
        facts["distributed_backend"] = gpus.distributed_backend()
        if trainer.args.device.type == "cuda":  # the rank's own GPU, known once the Trainer has set it up
            facts["gpu"] = torch.cuda.get_device_name(trainer.args.device)
            facts["gpu_uuid"] = str(torch.cuda.get_device_properties(trainer.args.device).uuid)
        records.update(facts=facts)
        tracker.config({"facts": facts})
        trainer.train(resume_from_checkpoint=checkpoint)
        if trial.nonfinite_step is not None:
            raise NonFiniteLoss(f"non-finite training loss at step {trial.nonfinite_step}")
        if trial.evaluated_step != trainer.state.global_step:  # eval_every may have just done it (the same answer on every rank)
            trainer.evaluate()
        model.save_pretrained(run_dir / ("model" if objs["lora"].full else "adapter"))
        processor.save_pretrained(run_dir / ("model" if objs["lora"].full else "adapter"))
        status, step = "completed", trainer.state.global_step
        records.update(final=trial.final, best=trial.best)
        tracker.summary({"status": status, **{f"best/{k}": v for k, v in trial.best.items()}})
    except KeyboardInterrupt:
        status, reason = "interrupted", "interrupted (KeyboardInterrupt)"
    except NonFiniteLoss as e:
        status, reason, step = "failed", str(e), trial.nonfinite_step
    except (ConfigError, CustomDataError) as e:
        status, reason = "failed", str(e)
        raise
    except Exception as e:  # noqa: BLE001 - a trial's record must say why it failed, whatever it was
        status, reason = "failed", f"{type(e).__name__}: {e}"
        records.update(traceback="".join(traceback.format_exc().splitlines(keepends=True)[-25:]))
        log.exception("trial %s failed", cfg.run_name)
    finally:
        if step is None and trainer is not None:
            step = trainer.state.global_step
        records.update(status=status, reason=reason, step=step, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), runtime_seconds=round(time.time() - started, 2))
        if tracker is not None:
            tracker.summary({"status": status, "reason": reason})
            tracker.finish(status)
    if reason:
        log.error("trial %s %s: %s", cfg.run_name, status, reason)
    return status


def _worker(overrides: list[str], run_dir: str, run_name: str, context: dict) -> str:
    """One rank of a multi-GPU trial, in a process started by torch's elastic launcher.

    The config is composed again from the same overrides with Hydra's compose API, so every
    schema applies as in the parent; the run folder and name are the parent's (one folder for
    all ranks).
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).resolve().parent.parent / "conf")):
        cfg = compose("train", overrides=overrides)
    cfg.paths.output_dir, cfg.run_name = run_dir, run_name
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][rank " + os.environ.get("RANK", "?") + "][%(name)s][%(levelname)s] - %(message)s")
    return run(cfg, Path(run_dir), context)  # the parent's Hydra context: workers have none


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

    The dataset and a random model (tiny or not) are prepared here first, so that the workers only load them.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    objs = {k: schema.to_object(cfg[k], k) for k in ("model", "image_size", "trainer")}
    nodes, endpoint, run_id, first_node = rendezvous(objs["trainer"])
    get_dataset(schema.data_config(cfg), cfg.paths.cache_dir, num_workers=cfg.num_workers)
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
    try:
        results = elastic_launch(config, _worker)(overrides, str(run_dir), cfg.run_name, context)
    except Exception as e:  # a rank died without reporting (killed, segfault): the record says so
        if first_node:
            Records(run_dir).update(status="failed", reason=f"a worker process failed: {type(e).__name__}: {str(e)[:2000]}")
        return "failed"
    # the global ranks' results; on a later node, rank 0's is not among them, but its own are the same
    return results.get(0, next(iter(results.values())))


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
        devices = int(cfg.trainer.devices)
        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and cfg.trainer.device != "cpu" and gpus.visible():
            gpus.claim(devices)  # parallel trials on one machine: each its own GPUs (vlmqc/gpus.py)
        # under torchrun (LOCAL_RANK set) this process already is one rank; else start the ranks here
        elastic = (devices > 1 or int(cfg.trainer.nodes) > 1 or bool(cfg.trainer.elastic)) and "LOCAL_RANK" not in os.environ
        status = launch(cfg, run_dir, devices) if elastic else run(cfg, run_dir)
    except (ConfigError, CustomDataError) as e:
        log.error("%s", e)
        if not multirun:
            sys.exit(2)
        status = "failed"
    if multirun:  # a failed trial must not stop the sweep: vlmqc.sweep reports it at the end
        return objective(run_dir, cfg.sweep_metric)
    if status != "completed":
        sys.exit(1)
    return None


def cli() -> None:
    sys.argv[1:] = schema.quote_numeric_options(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
