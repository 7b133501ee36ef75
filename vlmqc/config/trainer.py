"""The ``trainer`` group's schema: the loop, precision, evaluation and the speed levers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vlmqc.config.checks import SEED_MAX, _between, _check


class Precision(str, enum.Enum):
    auto = "auto"  # bf16 on a GPU that supports it, fp32 on the CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class LossMode(str, enum.Enum):
    full = "full"  # the model's own forward: logits at every position, then the loss (vlmqc/loss.py)
    answer_only = "answer_only"  # the output head and the cross-entropy at the answer positions only


# torch.compile's modes (torch.compile(mode=...)); null: its default
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class Preprocess(str, enum.Enum):
    step = "step"  # the processor runs on every row at every step, in the collator
    once = "once"  # the training split is encoded once before training and cached (vlmqc/preprocess.py)


class PixelStorage(str, enum.Enum):
    fp32 = "fp32"  # the processor's float32 pixels, exactly
    bf16 = "bf16"  # half the disk and memory; the same computation only when training in bf16 (vlmqc/preprocess.py)
    # bf16 where it is the same computation (bf16 training, a family whose pixels first meet a bf16 conv), else
    # fp32
    auto = "auto"


class VisionCache(str, enum.Enum):
    off = "off"  # the vision tower runs every step, as transformers runs it
    memory = "memory"  # frozen tower without autograd, its features cached per image for the trial's later epochs
    disk = "disk"  # and on disk (paths.features_dir), for the other trials of a sweep and reruns


# upper bounds, each with its reason: a value past them cannot run on any machine vlmqc targets
BATCH_MAX = 4096  # rows per device in one step: activations grow with it; no GPU holds 4096 rows of a VLM
# an answer is one sentence (the longest a prompt renders is under 200 tokens); each new token is one more
# forward pass over the batch and one more key/value row per layer in memory
MAX_NEW_TOKENS_MAX = 1024
# schedulers that step on an evaluation metric of the Trainer's own evaluate(); vlmqc evaluates by
# generation, its metrics outside the Trainer, so they would never get one
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")


def check_schedule(t: TrainerConfig) -> None:
    """Build the trial's learning-rate scheduler as the Trainer will (transformers' ``get_scheduler``,
    no scheduler arguments, the warmup of ``warmup_ratio``) on a one-parameter optimiser, and take
    a step: a scheduler that needs what the trial does not give it is refused here, not at step 0."""
    import math

    import torch
    from transformers import get_scheduler

    _check(
        t.lr_schedule not in METRIC_SCHEDULERS,
        "lr_schedule",
        t.lr_schedule,
        "steps on a metric of the Trainer's own evaluation, which vlmqc's evaluation (by generation) does not "
        "give it; use linear, cosine, constant, constant_with_warmup, polynomial, cosine_with_restarts or "
        "inverse_sqrt",
    )
    steps = t.max_steps if t.max_steps > 0 else 100
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    try:
        scheduler = get_scheduler(
            t.lr_schedule, optimizer, num_warmup_steps=math.ceil(steps * t.warmup_ratio), num_training_steps=steps
        )
        optimizer.step()
        scheduler.step()
    except (TypeError, ValueError) as e:
        _check(False, "lr_schedule", t.lr_schedule, f"cannot run with this trial's settings: {e}")


@dataclass
class TrainerConfig:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # per device
    grad_accum: int = 1
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # a transformers scheduler name: linear, cosine, constant, constant_with_warmup, ...
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: Precision = Precision.auto
    device: str = "auto"  # auto | cpu | cuda
    devices: int = 1  # processes (one GPU each) for one trial, with PyTorch DDP; per node when nodes > 1
    nodes: int = 1  # >1: one trial over that many Slurm nodes (hydra/launcher=slurm_multinode), devices GPUs on each
    rdzv_port: int = 29500  # multi-node: the port on the first node where the ranks meet (torch's c10d rendezvous)
    elastic: bool = (
        False  # start ranks with torch's elastic launcher even for one device (the multi-GPU path on one GPU)
    )
    lr_scale_with_batch: bool = False  # true: lr x effective batch / lr_reference_batch (linear scaling rule)
    lr_reference_batch: int = 8  # the effective batch that trainer.lr was chosen for
    ddp_find_unused_parameters: bool = (
        False  # true only for a model whose trainable parameters are not all used in every step
    )
    dataloader_workers: int = 0  # processes that collate batches (images -> tensors) while the GPU computes
    preprocess: Preprocess = (
        Preprocess.step
    )  # once: encode the training split once, cached; step: in the collator, every step
    preprocess_pixels: PixelStorage = (
        PixelStorage.fp32
    )  # how preprocess=once stores pixel_values; bf16 only for bf16 training
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = True  # re-running a trial resumes from its last checkpoint; a completed trial is not run again
    gradient_checkpointing: bool = False
    loss: LossMode = (
        LossMode.full
    )  # answer_only: the same loss and gradients, logits at the answer positions only (vlmqc/loss.py)
    compile: bool = False  # torch.compile the model (TrainingArguments.torch_compile)
    compile_mode: str | None = None  # torch.compile's mode (COMPILE_MODES); null: its default; only with compile=true
    # Liger Kernel's Triton kernels (TrainingArguments.use_liger_kernel): fused RMSNorm, RoPE, SwiGLU,
    # linear+cross-entropy; CUDA and the liger-kernel package only
    liger: bool = False
    group_by_length: bool = False  # batches of similar sequence length, less padding (Trainer's LengthGroupedSampler)
    eval_before: bool = True  # evaluate the base model first, as the study did
    eval_every: int = 0  # also evaluate by generation every N steps (0: before and after training only)
    eval_batch_size: int = 16
    eval_workers: int = (
        0  # processes that collate evaluation batches while the model generates (0: in the main process)
    )
    eval_limit: int = 0  # evaluate on the first N test examples (0: all)
    max_new_tokens: int = 48
    samples: int = 16  # inference samples logged per evaluation, always the same test ids
    vision_cache: VisionCache = VisionCache.off  # frozen image features computed once per image (vlmqc/features.py)
    # the in-memory tier's bound (host RAM, GiB); past it images are read from disk (disk) or recomputed (memory)
    vision_cache_memory_gb: float = 8.0

    def effective_batch(self, world_size: int) -> int:
        return self.batch_size * world_size * self.grad_accum

    def effective_lr(self, world_size: int) -> float:
        """The learning rate the optimiser uses: scaled only when the config says so."""
        return (
            self.lr * self.effective_batch(world_size) / self.lr_reference_batch
            if self.lr_scale_with_batch
            else self.lr
        )

    def __post_init__(self):
        # transformers is imported here, not at the top: the data app validates its own groups without it
        from transformers import SchedulerType

        _between(self.epochs, "epochs", 0)
        _check(self.epochs > 0 or self.max_steps > 0, "epochs", self.epochs, "must be > 0 (or set max_steps)")
        _check(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            self.max_steps,
            "must be -1 (train for epochs) or >= 1",
        )
        for key in (
            "batch_size",
            "grad_accum",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "eval_batch_size",
            "max_new_tokens",
            "devices",
            "nodes",
            "lr_reference_batch",
        ):
            _check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        for key in ("batch_size", "eval_batch_size"):
            _check(
                getattr(self, key) <= BATCH_MAX,
                key,
                getattr(self, key),
                f"must be <= {BATCH_MAX}: the rows of one step are held in memory at once, and no GPU holds that many "
                f"(use trainer.grad_accum for a larger effective batch)",
            )
        _check(
            self.max_new_tokens <= MAX_NEW_TOKENS_MAX,
            "max_new_tokens",
            self.max_new_tokens,
            f"must be <= {MAX_NEW_TOKENS_MAX}: answers are one sentence, and each token more is a forward pass over "
            f"the batch and a key/value row in memory",
        )
        _check(1 <= self.rdzv_port <= 65535, "rdzv_port", self.rdzv_port, "must be a TCP port, 1 to 65535")
        _check(self.dataloader_workers >= 0, "dataloader_workers", self.dataloader_workers, "must be >= 0")
        _check(self.eval_workers >= 0, "eval_workers", self.eval_workers, "must be >= 0")
        _between(self.lr, "lr", 0, low_open=True)
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be in [0, 1)")  # nan fails too
        _between(self.weight_decay, "weight_decay", 0)
        _between(self.max_grad_norm, "max_grad_norm", 0)  # 0: no clipping
        _between(self.seed, "seed", 0, SEED_MAX)
        schedules = [s.value for s in SchedulerType]
        _check(
            self.lr_schedule in schedules,
            "lr_schedule",
            self.lr_schedule,
            f"must be one of transformers' schedulers: {', '.join(schedules)}",
        )
        check_schedule(self)
        _check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "must be auto, cpu or cuda")
        # on an explicit CPU the answer is known now; with device=auto it depends on the machine
        # (train.training_arguments)
        _check(
            self.device != "cpu" or self.precision in (Precision.auto, Precision.fp32),
            "precision",
            self.precision.value,
            "mixed precision needs a GPU; with trainer.device=cpu use fp32 or auto",
        )
        for key in ("eval_every", "eval_limit", "samples"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        _check(
            self.vision_cache_memory_gb >= 0,
            "vision_cache_memory_gb",
            self.vision_cache_memory_gb,
            "must be >= 0 (GiB of host memory; 0: no in-memory tier)",
        )
        _check(
            self.compile_mode is None or self.compile_mode in COMPILE_MODES,
            "compile_mode",
            self.compile_mode,
            f"must be null or one of {', '.join(COMPILE_MODES)}",
        )
        _check(
            self.compile or self.compile_mode is None,
            "compile_mode",
            self.compile_mode,
            "applies only with trainer.compile=true",
        )
        # liger's fused linear+cross-entropy computes the loss inside the model's forward, without logits: it replaces
        # loss=answer_only's logits_to_keep path (vlmqc/loss.py), which would pass it arguments it does not take
        _check(
            not self.liger or self.loss is LossMode.full,
            "liger",
            True,
            "fuses the output head with the loss (no logits at all): use it with trainer.loss=full, not answer_only",
        )
        _check(
            not self.liger or self.device != "cpu",
            "liger",
            True,
            "runs Triton kernels: it needs a CUDA GPU, not trainer.device=cpu",
        )
        if self.preprocess_pixels is PixelStorage.bf16:
            _check(
                self.preprocess is Preprocess.once,
                "preprocess_pixels",
                "bf16",
                "stores encoded pixels: it needs trainer.preprocess=once",
            )
            # the rest (a GPU that runs bf16, a family whose first use of the pixels is a bf16 conv) is known at
            # run time: vlmqc/preprocess.py
            _check(
                self.precision in (Precision.auto, Precision.bf16) and self.device != "cpu",
                "preprocess_pixels",
                "bf16",
                "is the same computation only when training in bf16: set trainer.precision=bf16 (or auto on a GPU "
                "that has it), or use fp32",
            )
