"""The trial's ``TrainingArguments``: every trainer setting mapped onto transformers' Trainer,
which runs the loop, mixed precision, checkpoints, resume and DDP."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from transformers import TrainingArguments

from vlmqc.config import ConfigError, Precision
from vlmqc.devices import resolve_precision

# transformers renamed gradient_checkpointing to activation_checkpointing (5.2x); 5.17 knows only the old name
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def training_arguments(
    t, run_dir: Path, device: str, world_size: int = 1, eval_on_start: bool = False
) -> TrainingArguments:
    precision = resolve_precision(t.precision, device)
    if device == "cpu" and precision != Precision.fp32:
        raise ConfigError(f"trainer.precision={precision.value}: mixed precision needs a GPU here; use fp32 or auto")
    if t.liger:
        if device != "cuda":
            raise ConfigError("trainer.liger=true: Liger's Triton kernels need a CUDA GPU; this trial runs on the CPU")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError(
                "trainer.liger=true: the liger-kernel package is not installed (pip install liger-kernel)"
            )
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
        report_to="none",  # tracking goes through the Recorder, so the run folder and W&B get the same stream
        disable_tqdm=True,  # the Trainer's own bar prints its log dicts under it: vlmqc draws one (vlmqc/console.py)
    )
