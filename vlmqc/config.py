"""Config schemas: every option file in ``conf/`` inherits one of these dataclasses.

Hydra checks key names and types when it composes the config, so ``data.defect_rat=0.3`` or
``data.defect_types=[scratch]`` fails with a message naming the key. Ranges and cross-field
rules live in ``__post_init__``; ``validate`` instantiates every group (prefixing the failing key
with its group, so ``data.defect_rate=1.5`` fails naming ``data.defect_rate``) and adds the checks
that look at several groups or at the file system. Every entry point calls it before it touches a
folder, and ``check_command_line`` runs both composition and ``validate`` for each trial of a
command line before Hydra starts any, so every config error exits 2 with the key's name.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vlmqc.labels import ROWS, DefectType, Shape, Task


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key."""


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _between(value: float, key: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` if low_open), and finite: Hydra reads ``inf`` and
    ``nan`` as floats, and nan passes no comparison, so it must be named or it slips through."""
    above = value > low if low_open else value >= low
    ok = math.isfinite(value) and above and value <= high
    rule = f"must be {'>' if low_open else '>='} {low}" + (f" and <= {high}" if high != math.inf else "") + (" (finite)" if isinstance(value, float) else "")
    _check(ok, key, value, rule)


SEED_MAX = 2**32 - 1  # numpy's seeds (torch's too, through transformers' set_seed) are unsigned 32-bit


@dataclass
class IntRange:
    min: int = 1
    max: int = 1

    def check(self, key: str, lowest: int) -> None:
        _check(self.min >= lowest, f"{key}.min", self.min, f"must be >= {lowest}")
        _check(self.max >= self.min, f"{key}.max", self.max, f"must be >= {key}.min ({self.min})")


@dataclass
class RenderConfig:
    width: int = 448  # pixel width of one board image; a pair stacks two boards
    supersample: int = 2  # drawn at this multiple, then reduced: smooth edges, sub-pixel shifts

    def __post_init__(self):
        _check(160 <= self.width <= 4096, "render.width", self.width, "must be between 160 (coordinates must stay legible) and 4096 pixels")
        _check(self.supersample in (1, 2, 3, 4), "render.supersample", self.supersample, "must be 1, 2, 3 or 4")


@dataclass
class NuisanceConfig:
    """Variation that is not a defect, drawn independently for reference and candidate."""

    strength: float = 1.0  # multiplies every amplitude below; 0 gives clean, pixel-aligned renders
    brightness: float = 0.12  # max relative change of overall brightness
    contrast: float = 0.12  # max relative change of contrast
    gradient: float = 0.10  # max relative illumination slope across the board
    shift: float = 0.08  # max board shift, as a fraction of a cell
    rotation: float = 1.5  # max board rotation, degrees
    noise: float = 4.0  # sensor noise standard deviation, 8-bit levels
    blur: float = 0.8  # max Gaussian blur sigma, pixels

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _between(getattr(self, f.name), f"nuisance.{f.name}", 0)
        for key in ("brightness", "contrast", "gradient"):  # a relative change of 100% turns the board black
            _check(getattr(self, key) * self.strength < 1, f"nuisance.{key}", getattr(self, key), "times strength must be < 1")
        _check(self.noise * self.strength <= 64, "nuisance.noise", self.noise, "times strength must be <= 64 levels (beyond it the board drowns in noise)")
        _check(self.blur * self.strength <= 8, "nuisance.blur", self.blur, "times strength must be <= 8 pixels (beyond it terminals merge)")
        _check(self.shift * self.strength <= 0.15, "nuisance.shift", self.shift, "times strength must be <= 0.15 cell (a board shifted further puts terminals under the wrong coordinate)")
        _check(self.rotation * self.strength <= 3, "nuisance.rotation", self.rotation, "times strength must be <= 3 degrees")


class DiffMode(str, enum.Enum):
    overlay = "overlay"  # the aligned candidate, dimmed except where it differs from the reference
    heatmap = "heatmap"  # the difference alone as a heat map
    cells = "cells"  # one deviation score per cell, drawn as a 3 x 9 map


@dataclass
class DiffImageConfig:
    mode: DiffMode = DiffMode.overlay
    smoothing: float = 1.5  # Gaussian sigma (pixels) applied to the difference, suppresses sensor noise
    scale: float = 40.0  # smoothed difference (8-bit levels) shown at full intensity
    keep_source: bool = True  # store the raw pair beside the derived image

    def __post_init__(self):
        _between(self.smoothing, "diff.smoothing", 0)
        _between(self.scale, "diff.scale", 0, low_open=True)


class Layout(str, enum.Enum):
    stacked = "stacked"  # the pair as one image: reference on top, candidate below (the study's)
    separate = "separate"  # two images in one user turn: reference first, then candidate


@dataclass
class DataConfig:
    TASK: ClassVar[Task]
    name: str = MISSING
    task: Task = MISSING
    seed: int = 0
    layout: Layout = Layout.stacked  # how a pair is shown to the model; not part of the stored data

    def __post_init__(self):
        _check(self.task == self.TASK, "task", self.task.value, f"must be {self.TASK.value!r} for this kind of dataset")
        _check(
            self.layout is Layout.stacked or self.TASK in (Task.pair, Task.custom),
            "layout",
            self.layout.value,
            f"must be stacked: the {self.TASK.value} task shows one image by construction",
        )
        _between(self.seed, "seed", 0, SEED_MAX)


@dataclass
class SynthConfig(DataConfig):
    train_size: int = 500
    test_size: int = 300
    terminal_shapes: list[Shape] = field(default_factory=lambda: [Shape.square])
    render: RenderConfig = field(default_factory=RenderConfig)
    nuisance: NuisanceConfig = field(default_factory=NuisanceConfig)

    def __post_init__(self):
        super().__post_init__()
        _check(self.train_size >= 1, "train_size", self.train_size, "must be >= 1")
        _check(self.test_size >= 1, "test_size", self.test_size, "must be >= 1")
        _check(len(self.terminal_shapes) > 0, "terminal_shapes", self.terminal_shapes, "must name at least one shape")
        _check(len(set(self.terminal_shapes)) == len(self.terminal_shapes), "terminal_shapes", self.terminal_shapes, "has duplicates")


@dataclass
class StarConfig(SynthConfig):
    TASK = Task.star
    task: Task = Task.star
    distractors: IntRange = field(default_factory=lambda: IntRange(2, 6))  # other marks, each in its own cell

    def __post_init__(self):
        super().__post_init__()
        self.distractors.check("distractors", 0)
        _check(self.distractors.max <= 20, "distractors.max", self.distractors.max, "must be <= 20 (26 cells are free)")


@dataclass
class PairConfig(SynthConfig):
    TASK = Task.pair
    task: Task = Task.pair
    defect_rate: float = 0.5  # fraction of candidates that are defective
    defect_types: list[DefectType] = field(default_factory=lambda: list(DefectType))
    defects_per_candidate: IntRange = field(default_factory=IntRange)

    def __post_init__(self):
        super().__post_init__()
        _check(0.0 <= self.defect_rate <= 1.0, "defect_rate", self.defect_rate, "must be between 0 and 1")  # nan fails too
        _check(len(self.defect_types) > 0, "defect_types", self.defect_types, "must name at least one defect type")
        _check(len(set(self.defect_types)) == len(self.defect_types), "defect_types", self.defect_types, "has duplicates")
        self.defects_per_candidate.check("defects_per_candidate", 1)
        _check(self.defects_per_candidate.max <= 27, "defects_per_candidate.max", self.defects_per_candidate.max, "must be <= 27 (the board has 27 cells)")


@dataclass
class DiffConfig(PairConfig):
    TASK = Task.diff
    task: Task = Task.diff
    diff: DiffImageConfig = field(default_factory=DiffImageConfig)


@dataclass
class CustomConfig(DataConfig):
    TASK = Task.custom
    task: Task = Task.custom
    path: str = MISSING  # folder with the images and the metadata file
    metadata: str = "metadata.jsonl"  # one JSON object per line, relative to path
    test_fraction: float = 0.375  # used when metadata.jsonl names no split (0.375 = 300 of 800)
    stack_reference: bool = True  # a row with a reference: the model sees reference on top, image below
    defect_types: list[str] = field(default_factory=lambda: [t.value for t in DefectType])
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    columns: int = 9
    # refused at validation, from the header: Pillow's own warning threshold, so the trial's decoder stays quiet
    max_pixels: int = 89_478_485

    def __post_init__(self):
        super().__post_init__()
        _check(self.max_pixels >= 1, "max_pixels", self.max_pixels, "must be >= 1")
        _check(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "must be between 0 and 1 (exclusive)")
        _check(len(self.defect_types) > 0, "defect_types", self.defect_types, "must name at least one defect type")
        _check(len(self.rows) > 0 and all(r.isalpha() and r.isupper() for r in self.rows), "rows", self.rows, "must be upper-case letters")
        _between(self.columns, "columns", 1, 99)  # positions are written <row><column>


class AnswerFormat(str, enum.Enum):
    text = "text"  # free text, parsed tolerantly
    json = "json"  # a JSON object: {"verdict": ..., "defects": [{"position": ..., "type": ...}]} or {"position": ...}


@dataclass
class PromptConfig:
    """The words of a trial: what the model is asked, and how a correct answer reads.

    Templates are Python format strings. The answer text a model is trained on is rendered
    from an example's structured labels with these templates (see vlmqc/prompts.py).
    """

    name: str = MISSING
    pair: str = MISSING  # instruction for a reference/candidate pair (and the custom task)
    # the same, the pair given as two images (data.layout=separate); optional so that the prompt of a
    # run recorded before layouts existed still loads (rescore, predict), required by that layout
    pair_separate: str | None = None
    diff: str = MISSING  # instruction for the concentrated-anomaly image
    star: str = MISSING  # instruction for the star task
    format: AnswerFormat = AnswerFormat.text
    answer_pass: str = "The bottom product passed."
    answer_defective: str = "The bottom product is defective: {defects}."  # {defects}: the items joined
    defect_item: str = "{name} at {position}"  # {name}: the defect's name below, {position}: e.g. C5
    defect_separator: str = "; "
    answer_star: str = "The red star is at {position}."
    # canonical defect type -> the name this prompt uses; a missing type uses the canonical English name
    defect_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.pair_separate is None or bool(self.pair_separate.strip()), "pair_separate", self.pair_separate, "must not be empty (or null)")
        for key in ("pair", "diff", "star", "answer_pass", "answer_star"):
            _check(bool(getattr(self, key).strip()), key, getattr(self, key), "must not be empty")
        unknown = sorted(set(self.defect_names) - {t.value for t in DefectType})
        _check(not unknown, "defect_names", unknown, f"unknown defect type(s); known: {', '.join(t.value for t in DefectType)}")
        _check("{defects}" in self.answer_defective, "answer_defective", self.answer_defective, "must contain {defects}")
        _check("{position}" in self.answer_star, "answer_star", self.answer_star, "must contain {position}")
        _check("{position}" in self.defect_item, "defect_item", self.defect_item, "must contain {position}")


@dataclass
class TinyModelConfig:
    """Sizes of a tiny random model (model.random=<family>): the tiny LLaVA's vision tower and
    language model, and the sizes every family's tiny builder takes its own shape from."""

    vision_hidden: int = 32
    vision_layers: int = 2
    patch_size: int = 16
    native_size: int = 224  # the resolution it is built for when image_size=native
    text_hidden: int = 64
    text_layers: int = 2
    vocab_size: int = 1024  # byte-level BPE trained offline
    init_std: float = 0.1  # weight init, 5x the usual 0.02: lets adapters move a random model's logits
    seed: int = 0

    def __post_init__(self):
        for key in ("vision_hidden", "vision_layers", "patch_size", "native_size", "text_hidden", "text_layers"):
            _check(getattr(self, key) >= 1, f"tiny.{key}", getattr(self, key), "must be >= 1")
        _check(self.native_size % self.patch_size == 0, "tiny.native_size", self.native_size, f"must be a multiple of tiny.patch_size ({self.patch_size})")
        _check(self.vocab_size >= 512, "tiny.vocab_size", self.vocab_size, "must be >= 512 (bytes, special tokens, merges)")
        _between(self.init_std, "tiny.init_std", 0, 1, low_open=True)
        _between(self.seed, "tiny.seed", 0, SEED_MAX)


@dataclass
class Qwen2VLTextShape:
    """The language model of a random Qwen2-VL; names as in transformers' Qwen2VLTextConfig.

    Defaults: Qwen2-VL-2B-Instruct."""

    hidden_size: int = 1536
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    intermediate_size: int = 8960
    vocab_size: int = 151936  # embedding rows, as the real model; the small tokenizer uses the first few hundred
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: list[int] = field(default_factory=lambda: [16, 24, 24])  # rotary frequencies for time, height, width; sums to head size / 2


@dataclass
class Qwen2VLVisionShape:
    """The vision tower of a random Qwen2-VL; names as in transformers' Qwen2VLVisionConfig.

    Defaults: Qwen2-VL-2B-Instruct. Its output width is the language model's hidden_size."""

    depth: int = 32
    embed_dim: int = 1280
    num_heads: int = 16
    mlp_ratio: int = 4
    patch_size: int = 14
    spatial_merge_size: int = 2  # 2 x 2 patches merge into one image token
    temporal_patch_size: int = 2


@dataclass
class Qwen2VLModelConfig:
    """A Qwen2-VL with random weights, the byte-level BPE tokenizer with Qwen's special tokens, and
    Qwen's chat format; the pixel budget is the processor's (it keeps the aspect ratio)."""

    text: Qwen2VLTextShape = field(default_factory=Qwen2VLTextShape)
    vision: Qwen2VLVisionShape = field(default_factory=Qwen2VLVisionShape)
    tie_word_embeddings: bool = True
    tokenizer_vocab_size: int = 1024  # byte-level BPE trained offline
    min_pixels: int = 56 * 56  # images are scaled up to at least this many pixels
    max_pixels: int = 448 * 448  # and down to at most this many: the resolution of image_size=native
    initializer_range: float = 0.02
    seed: int = 0

    def __post_init__(self):
        t, v = self.text, self.vision
        for part, shape in (("text", t), ("vision", v)):
            for f in dataclasses.fields(shape):
                value = getattr(shape, f.name)
                _check(not isinstance(value, int) or value >= 1, f"qwen2_vl.{part}.{f.name}", value, "must be >= 1")
        heads, kv = t.num_attention_heads, t.num_key_value_heads
        _check(t.hidden_size % heads == 0, "qwen2_vl.text.hidden_size", t.hidden_size, f"must be a multiple of text.num_attention_heads ({heads})")
        _check(heads % kv == 0, "qwen2_vl.text.num_key_value_heads", kv, f"must divide text.num_attention_heads ({heads})")
        half = t.hidden_size // heads // 2
        _check(
            len(t.mrope_section) == 3 and sum(t.mrope_section) == half,
            "qwen2_vl.text.mrope_section",
            t.mrope_section,
            f"must be 3 numbers summing to half the head size ({half})",
        )
        _check(
            v.embed_dim % (4 * v.num_heads) == 0, "qwen2_vl.vision.embed_dim", v.embed_dim, f"must be a multiple of 4 x vision.num_heads ({4 * v.num_heads})"
        )
        _check(self.tokenizer_vocab_size >= 512, "qwen2_vl.tokenizer_vocab_size", self.tokenizer_vocab_size, "must be >= 512 (bytes, special tokens, merges)")
        _check(
            t.vocab_size >= self.tokenizer_vocab_size,
            "qwen2_vl.text.vocab_size",
            t.vocab_size,
            f"must be >= tokenizer_vocab_size ({self.tokenizer_vocab_size})",
        )
        side = v.patch_size * v.spatial_merge_size
        _check(self.min_pixels >= side * side, "qwen2_vl.min_pixels", self.min_pixels, f"must be >= {side * side} (one image token: {side} x {side} pixels)")
        _check(self.max_pixels >= self.min_pixels, "qwen2_vl.max_pixels", self.max_pixels, f"must be >= min_pixels ({self.min_pixels})")
        _between(t.rms_norm_eps, "qwen2_vl.text.rms_norm_eps", 0, 1, low_open=True)
        _between(t.rope_theta, "qwen2_vl.text.rope_theta", 0, low_open=True)
        _between(self.initializer_range, "qwen2_vl.initializer_range", 0, 1, low_open=True)
        _between(self.seed, "qwen2_vl.seed", 0, SEED_MAX)


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str | None = None  # a local checkpoint folder or a hub id; null = build the random model `random`
    random: str | None = None  # the family whose random model path=null builds offline (vlmqc.models); null: path is required
    trust_remote_code: bool = False  # only a model config that needs it sets it
    dtype: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | float32 | bfloat16 | float16
    attn_implementation: str | None = None  # e.g. sdpa, eager, flash_attention_2; null = the library's choice
    family: str | None = None  # the model family (vlmqc.models) of the published checkpoint a preset names, for vlmqc.inspect
    # the published checkpoint's processor settings (patch and merge size, pixel budget, tile size,
    # crops, image token count...: published facts), from which vlmqc.inspect builds the family's
    # processor offline, with no weights; keys are the family's (Family.offline_processor)
    processor: dict[str, Any] = field(default_factory=dict)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    qwen2_vl: Qwen2VLModelConfig = field(default_factory=Qwen2VLModelConfig)

    def __post_init__(self):
        if self.random is None and self.name == "tiny":
            self.random = "llava"  # the tiny preset, built in Python as ModelConfig(name="tiny")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", self.dtype, "must be auto, float32, bfloat16 or float16")
        _check(
            self.path is not None or self.random is not None,
            "path",
            self.path,
            "must name a checkpoint folder or hub id (or model.random: a model built offline)",
        )


class LoraTarget(str, enum.Enum):
    language = "language"  # the language model's linear layers
    language_vision = "language_vision"  # and the vision tower's and the projector's
    all_linear = "all_linear"  # every linear layer but the output head


@dataclass
class LoraConfig:
    name: str = MISSING
    full: bool = False  # full fine-tuning instead of adapters (r, alpha, dropout, target unused)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target: LoraTarget = LoraTarget.language
    train_vision: bool = False  # full fine-tuning only: whether the vision tower trains too

    def __post_init__(self):
        _check(self.r >= 1, "r", self.r, "must be >= 1")
        _check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")  # nan fails too


@dataclass
class ImageSizeConfig:
    name: str = MISSING
    size: int | None = None  # side of the square input in pixels (Qwen2-VL: size x size pixels, aspect kept); null = the model's native one

    def __post_init__(self):
        _check(self.size is None or 32 <= self.size <= 8192, "size", self.size, "must be between 32 and 8192 pixels, or null for the model's native resolution")


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
    auto = "auto"  # bf16 where it is the same computation (bf16 training, a family whose pixels first meet a bf16 conv), else fp32


class VisionCache(str, enum.Enum):
    off = "off"  # the vision tower runs every step, as transformers runs it
    memory = "memory"  # frozen tower without autograd, its features cached per image for the trial's later epochs
    disk = "disk"  # and on disk (paths.features_dir), for the other trials of a sweep and reruns


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
    elastic: bool = False  # start ranks with torch's elastic launcher even for one device (the multi-GPU path on one GPU)
    lr_scale_with_batch: bool = False  # true: lr x effective batch / lr_reference_batch (linear scaling rule)
    lr_reference_batch: int = 8  # the effective batch that trainer.lr was chosen for
    ddp_find_unused_parameters: bool = False  # true only for a model whose trainable parameters are not all used in every step
    dataloader_workers: int = 0  # processes that collate batches (images -> tensors) while the GPU computes
    preprocess: Preprocess = Preprocess.step  # once: encode the training split once, cached; step: in the collator, every step
    preprocess_pixels: PixelStorage = PixelStorage.fp32  # how preprocess=once stores pixel_values; bf16 only for bf16 training
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool = True  # re-running a trial resumes from its last checkpoint; a completed trial is not run again
    gradient_checkpointing: bool = False
    loss: LossMode = LossMode.full  # answer_only: the same loss and gradients, logits at the answer positions only (vlmqc/loss.py)
    compile: bool = False  # torch.compile the model (TrainingArguments.torch_compile)
    compile_mode: str | None = None  # torch.compile's mode (COMPILE_MODES); null: its default; only with compile=true
    liger: bool = False  # Liger Kernel's Triton kernels (TrainingArguments.use_liger_kernel): fused RMSNorm, RoPE, SwiGLU, linear+cross-entropy; CUDA and the liger-kernel package only
    group_by_length: bool = False  # batches of similar sequence length, less padding (Trainer's LengthGroupedSampler)
    eval_before: bool = True  # evaluate the base model first, as the study did
    eval_every: int = 0  # also evaluate by generation every N steps (0: before and after training only)
    eval_batch_size: int = 16
    eval_workers: int = 0  # processes that collate evaluation batches while the model generates (0: in the main process)
    eval_limit: int = 0  # evaluate on the first N test examples (0: all)
    max_new_tokens: int = 48
    samples: int = 16  # inference samples logged per evaluation, always the same test ids
    vision_cache: VisionCache = VisionCache.off  # frozen image features computed once per image (vlmqc/features.py)
    vision_cache_memory_gb: float = 8.0  # the in-memory tier's bound (host RAM, GiB); past it images are read from disk (disk) or recomputed (memory)

    def effective_batch(self, world_size: int) -> int:
        return self.batch_size * world_size * self.grad_accum

    def effective_lr(self, world_size: int) -> float:
        """The learning rate the optimiser uses: scaled only when the config says so."""
        return self.lr * self.effective_batch(world_size) / self.lr_reference_batch if self.lr_scale_with_batch else self.lr

    def __post_init__(self):
        # transformers is imported here, not at the top: the data app validates its own groups without it
        from transformers import SchedulerType

        _between(self.epochs, "epochs", 0)
        _check(self.epochs > 0 or self.max_steps > 0, "epochs", self.epochs, "must be > 0 (or set max_steps)")
        _check(self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "must be -1 (train for epochs) or >= 1")
        for key in ("batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit", "eval_batch_size", "max_new_tokens", "devices", "nodes", "lr_reference_batch"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        _check(1 <= self.rdzv_port <= 65535, "rdzv_port", self.rdzv_port, "must be a TCP port, 1 to 65535")
        _check(self.dataloader_workers >= 0, "dataloader_workers", self.dataloader_workers, "must be >= 0")
        _check(self.eval_workers >= 0, "eval_workers", self.eval_workers, "must be >= 0")
        _between(self.lr, "lr", 0, low_open=True)
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be in [0, 1)")  # nan fails too
        _between(self.weight_decay, "weight_decay", 0)
        _between(self.max_grad_norm, "max_grad_norm", 0)  # 0: no clipping
        _between(self.seed, "seed", 0, SEED_MAX)
        schedules = [s.value for s in SchedulerType]
        _check(self.lr_schedule in schedules, "lr_schedule", self.lr_schedule, f"must be one of transformers' schedulers: {', '.join(schedules)}")
        _check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "must be auto, cpu or cuda")
        # on an explicit CPU the answer is known now; with device=auto it depends on the machine (train.training_arguments)
        _check(
            self.device != "cpu" or self.precision in (Precision.auto, Precision.fp32),
            "precision",
            self.precision.value,
            "mixed precision needs a GPU; with trainer.device=cpu use fp32 or auto",
        )
        for key in ("eval_every", "eval_limit", "samples"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        _check(self.vision_cache_memory_gb >= 0, "vision_cache_memory_gb", self.vision_cache_memory_gb, "must be >= 0 (GiB of host memory; 0: no in-memory tier)")
        _check(self.compile_mode is None or self.compile_mode in COMPILE_MODES, "compile_mode", self.compile_mode, f"must be null or one of {', '.join(COMPILE_MODES)}")
        _check(self.compile or self.compile_mode is None, "compile_mode", self.compile_mode, "applies only with trainer.compile=true")
        # liger's fused linear+cross-entropy computes the loss inside the model's forward, without logits: it replaces
        # loss=answer_only's logits_to_keep path (vlmqc/loss.py), which would pass it arguments it does not take
        _check(not self.liger or self.loss is LossMode.full, "liger", True, "fuses the output head with the loss (no logits at all): use it with trainer.loss=full, not answer_only")
        _check(not self.liger or self.device != "cpu", "liger", True, "runs Triton kernels: it needs a CUDA GPU, not trainer.device=cpu")
        if self.preprocess_pixels is PixelStorage.bf16:
            _check(self.preprocess is Preprocess.once, "preprocess_pixels", "bf16", "stores encoded pixels: it needs trainer.preprocess=once")
            # the rest (a GPU that runs bf16, a family whose first use of the pixels is a bf16 conv) is known at run time: vlmqc/preprocess.py
            _check(self.precision in (Precision.auto, Precision.bf16) and self.device != "cpu", "preprocess_pixels", "bf16",
                   "is the same computation only when training in bf16: set trainer.precision=bf16 (or auto on a GPU that has it), or use fp32")


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | none
    project: str = "vlmqc"
    entity: str | None = None
    group: str | None = None  # a sweep sets its id here
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"  # offline (default: no account needed) | online | disabled
    print_summary: bool = False  # W&B's own history and summary printed when a run finishes (the run folder's summary.json has it either way)

    def __post_init__(self):
        _check(self.name in ("wandb", "none"), "name", self.name, "must be wandb or none")
        _check(self.mode in ("offline", "online", "disabled"), "mode", self.mode, "must be offline, online or disabled")


@dataclass
class PathsConfig:
    cache_dir: str = MISSING  # generated datasets, keyed by a hash of the data config
    models_dir: str = MISSING  # models built offline (model.random=<family>: vlmqc/models)
    features_dir: str = MISSING  # frozen vision features (trainer.vision_cache=disk), keyed by a fingerprint of the image path
    output_dir: str = MISSING


@dataclass
class ContactSheetConfig:
    split: str = "test"
    examples: int = 12

    def __post_init__(self):
        _check(self.split in ("train", "test"), "split", self.split, "must be train or test")
        _check(1 <= self.examples <= 1000, "examples", self.examples, "must be between 1 and 1000")


@dataclass
class DataAppConfig:
    """``python -m vlmqc.data``: build or load a dataset, print its counts, draw a contact sheet."""

    data: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    num_workers: int = 2  # processes that render examples; results do not depend on it
    contact_sheet: ContactSheetConfig = field(default_factory=ContactSheetConfig)
    baseline: bool = True  # pair and diff tasks: score the test split with the pixel difference alone


@dataclass
class TrainAppConfig:
    """``python -m vlmqc.train``: one trial."""

    data: Any = MISSING
    model: ModelConfig = MISSING
    prompt: PromptConfig = MISSING
    lora: LoraConfig = MISSING
    image_size: ImageSizeConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: Any = None
    run_name: str = MISSING  # from the command line's overrides; names the run folder and the W&B run
    sweep_metric: str = "eval/exact_match"  # what a metric-driven sweep optimises and a report sorts by
    num_workers: int = 2  # dataset generation processes
    quiet: bool = False  # errors only on the console: no progress bars, no log lines (vlmqc/console.py)


@dataclass
class InspectAppConfig:
    """``python -m vlmqc.inspect``: what the model sees of a few examples, and what it costs."""

    data: Any = MISSING
    model: ModelConfig = MISSING
    prompt: PromptConfig = MISSING
    lora: LoraConfig = MISSING  # whether the vision tower keeps activations for backward
    image_size: ImageSizeConfig | None = None  # null: every option of conf/image_size
    trainer: TrainerConfig = MISSING  # batch size and precision of the memory estimate
    paths: PathsConfig = field(default_factory=PathsConfig)
    examples: int = 3  # test examples shown, the first ones
    num_workers: int = 2  # dataset generation processes


DATA_SCHEMAS = {
    "star": StarConfig,
    "pair": PairConfig,
    "diff": DiffConfig,
    "custom": CustomConfig,
}


def register() -> None:
    """Store the schemas where option files find them (``defaults: [<schema>]``)."""
    cs = ConfigStore.instance()
    cs.store(name="data_app_schema", node=DataAppConfig)
    cs.store(group="paths", name="paths_schema", node=PathsConfig)
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="inspect_schema", node=InspectAppConfig)
    for group, schema in (("prompt", PromptConfig), ("model", ModelConfig), ("lora", LoraConfig), ("image_size", ImageSizeConfig), ("trainer", TrainerConfig), ("logger", LoggerConfig)):
        cs.store(group=group, name=f"{group}_schema", node=schema)
    for task, schema in DATA_SCHEMAS.items():
        cs.store(group="data", name=f"{task}_schema", node=schema)


def to_object(node: DictConfig, key: str) -> Any:
    """Instantiate one group's schema, running its checks; errors name the full key."""
    try:
        return OmegaConf.to_object(node)
    except ConfigError as e:
        raise ConfigError(f"{key}.{e}") from None
    except MissingMandatoryValue as e:  # a ``???`` nobody set, e.g. data.path of data=custom
        raise ConfigError(f"{e.full_key}: required, and not set (give it on the command line: {e.full_key}=...)") from None
    except OmegaConfBaseException as e:  # an interpolation that does not resolve, a key added with +
        raise ConfigError(f"{e.full_key or key}: {str(e).splitlines()[0]}") from None


TRAIN_GROUPS = ("model", "data", "prompt", "lora", "image_size", "trainer", "logger", "paths")
DATA_APP_GROUPS = ("data", "paths", "contact_sheet")
INSPECT_GROUPS = ("model", "data", "prompt", "lora", "image_size", "trainer", "paths")
# a hub id as the hub spells it, org/name; a local path is anything that exists as a folder
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Every group of a composed app config (train or data) as its schema's object, with every
    check run: each group's ranges, then what spans groups or looks at the file system.

    Every entry point calls it before it touches a folder or claims a GPU; a ``ConfigError`` names
    the key, and the apps exit 2 on it. Nothing here reaches the network: a hub id is only
    checked for its shape.
    """
    app = OmegaConf.get_type(cfg)
    groups = {TrainAppConfig: TRAIN_GROUPS, InspectAppConfig: INSPECT_GROUPS}.get(app, DATA_APP_GROUPS)
    objs = {group: None if cfg[group] is None else to_object(cfg[group], group) for group in groups}
    _check(cfg.num_workers >= 0, "num_workers", cfg.num_workers, "must be >= 0")
    data = objs["data"]
    if isinstance(data, CustomConfig):
        # as vlmqc/data/custom.py reads it
        _check(os.path.isdir(os.path.expanduser(data.path)), "data.path", data.path, "folder not found")
    if app is DataAppConfig:
        return objs
    if app is TrainAppConfig:
        from vlmqc.records import METRICS  # here: records imports prompts, which imports this module

        _check(cfg.sweep_metric in METRICS, "sweep_metric", cfg.sweep_metric, f"must be one of the metrics: {', '.join(METRICS)}")
    else:
        _check(1 <= cfg.examples <= 100, "examples", cfg.examples, "must be between 1 and 100")
    model, size = objs["model"], objs["image_size"] or ImageSizeConfig(name="native")
    if model.path is not None and not os.path.isdir(model.path):
        # transformers reads "~" and "./x" as hub ids, so a path the shell did not expand fails late
        looks_local = model.path.startswith(("/", ".", "~")) or "\\" in model.path
        _check(
            not looks_local and HUB_ID.fullmatch(model.path),
            "model.path",
            model.path,
            "folder not found" if looks_local else "is neither an existing folder nor a hub id (org/name)",
        )
    from vlmqc import models  # here: the families' checks, without loading a model

    models.check(model, size, data.layout)
    if data.layout is Layout.separate and "prompt" in objs:
        _check(objs["prompt"].pair_separate is not None, "prompt.pair_separate", None,
               f"required by data.layout=separate: the {objs['prompt'].name} prompt has no wording for a pair given as two images")
    if app is InspectAppConfig and model.path is not None and not os.path.isdir(model.path):
        # no checkpoint on disk: the processor is built offline from the preset's published facts
        _check(model.family in models.families(), "model.family", model.family, f"must name the family of {model.path} to inspect it without its files (families: {', '.join(sorted(models.families()))})")
        family = models.families()[model.family]
        _check(type(family).offline_processor is not models.Family.offline_processor, "model.family", model.family,
               "this family cannot be inspected offline yet (it has no offline_processor); give model.path=<a local checkpoint folder>")
        _check(bool(model.processor), "model.processor", {}, f"must hold the published processor facts of {model.path}")
        family.check(model, size, data.layout)
    return objs


RUN_NAME_MAX = 255  # bytes in one file name (ext4, xfs, APFS): the run folder is named after the run
RUN_NAME_PREFIX = 120  # bytes of a too-long name kept readable before its hash


def _run_name(overrides: str) -> str:
    """A run's name from its command-line overrides: ``data=pair_round,lora=r16``; a path's
    slashes would nest folders, so they become underscores, and quotes (``image_size='448'``) go.

    A name too long for a file name keeps its first bytes and adds a hash of the whole override
    string, so the same overrides always name the same folder (resume finds it) and two long
    names that share a beginning do not collide. A name that fits is never changed: existing run
    folders keep their names.
    """
    name = overrides.replace("/", "_").replace("\\", "_").replace("'", "").replace('"', "")
    if len(name.encode()) > RUN_NAME_MAX:
        prefix = name.encode()[:RUN_NAME_PREFIX].decode(errors="ignore")  # never half a character
        name = f"{prefix}-{hashlib.sha256(overrides.encode()).hexdigest()[:10]}"
    return name or "default"


def _gpu_count() -> int:
    """The GPUs this machine shows the launching process (hydra/launcher=gpus_local gives them all
    to every trial, and each trial then claims its own: vlmqc/gpus.py)."""
    import torch

    return torch.cuda.device_count()


if not OmegaConf.has_resolver("vlmqc.run_name"):
    OmegaConf.register_new_resolver("vlmqc.run_name", _run_name)
def _cpus() -> int:
    """Cores this process may run on (its affinity: a Slurm or taskset share, not the whole host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


if not OmegaConf.has_resolver("vlmqc.cpus"):
    OmegaConf.register_new_resolver("vlmqc.cpus", _cpus)
if not OmegaConf.has_resolver("vlmqc.gpu_count"):
    OmegaConf.register_new_resolver("vlmqc.gpu_count", _gpu_count)


NUMERIC_GROUPS = ("image_size",)  # config groups whose option names are numbers: image_size=448


def quote_numeric_options(argv: list[str]) -> list[str]:
    """``image_size=448`` -> ``image_size='448'`` (and ``=224,448`` -> ``='224','448'``).

    Hydra's override grammar reads 448 as an integer and refuses an integer as a config group's
    option; quoted, it is the option named 448. Hydra has no hook for this, so the command line
    is rewritten before Hydra reads it.
    """
    groups = "|".join(NUMERIC_GROUPS)
    out = []
    for arg in argv:
        m = re.fullmatch(rf"(\+{{0,2}}(?:{groups}))=(\d+(?:,\d+)*)", arg)
        out.append(f"{m[1]}=" + ",".join(f"'{v}'" for v in m[2].split(",")) if m else arg)
    return out


def data_config(cfg: DictConfig) -> SynthConfig | CustomConfig:
    """The validated data config object of a composed app config."""
    return to_object(cfg.data, "data")


CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def run_checked(app: str, main, quote_numeric: bool = True) -> None:
    """An app's ``cli()``: every config of the command line (each trial of a ``-m`` sweep) is
    composed and validated before Hydra starts ``main``, so a config error exits 2 naming the key
    on stderr (Hydra's own report exits 1). ``quote_numeric``: ``image_size=448`` names the option."""
    import sys

    if quote_numeric:
        sys.argv[1:] = quote_numeric_options(sys.argv[1:])
    try:
        check_command_line(app, sys.argv[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    main()


def check_command_line(config_name: str, argv: list[str]) -> int:
    """Compose and ``validate`` the config of every trial a command line will run, before Hydra
    runs any; returns how many were checked, raises ``ConfigError`` naming the key.

    Hydra reports its own composition errors (a misspelt key, a wrong type, an unknown option)
    through a handler that prints and exits 1, with no hook to change that, so the apps compose
    here first with Hydra's compose API, from the same overrides. A ``-m`` sweep of Hydra's basic
    sweeper is expanded as that sweeper does (its ``hydra.sweeper.params``, then the command line)
    and every trial is checked; another sweeper (Optuna) picks trials as it goes, so only the
    config without the swept values is. Costs a composition per trial (about 0.1 s).
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser  # Hydra's own command line, so flags mean the same
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.shell_completion or args.info or args.experimental_rerun or args.config_path or args.config_dir:
        return 0  # no trial runs, or the config comes from elsewhere: Hydra handles it
    name = args.config_name or config_name
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            trials = [args.overrides]
            if args.multirun:
                parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
                fixed = [o.input_line for o in parser.parse_overrides(args.overrides) if not o.is_sweep_override()]
                sweeper = compose(name, fixed, return_hydra_config=True).hydra.sweeper
                trials = [fixed]
                if sweeper.get("_target_") == BASIC_SWEEPER:
                    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
                    trials = [t for batch in BasicSweeper.split_arguments(parser.parse_overrides(params + args.overrides), None) for t in batch]
            for overrides in trials:
                cfg = compose(name, list(overrides))
                # Hydra names the run folder when the job starts; until then ${hydra:runtime.output_dir} has no value
                cfg.paths.output_dir = str(Path.cwd())
                validate(cfg)
    except HydraException as e:
        raise ConfigError(_hydra_message(e)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]}") from None
    return len(trials)


def _hydra_message(e: Exception) -> str:
    """One line naming the key: Hydra's message, and its cause's (where omegaconf says what is wrong)."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, option = e.missing_cfg_file.rpartition("/")
        return f"{group}={option}: no such option (available: {', '.join(o for o in e.options if not o.endswith('_schema'))})"
    text = str(e).splitlines()[0].rstrip(".")
    if e.__cause__ is not None:
        text += ": " + str(e.__cause__).splitlines()[0]
    return text


register()


# Settings that do not change what a trial computes: they stay out of its run name (conf/train.yaml
# reads this list through the resolver below) and out of the config hash that guards a resume
# (vlmqc/resume.py). One list, so a key that names a different folder always guards a resume too.
NON_COMPUTING_KEYS = (
    "trainer.resume",
    "logger",
    "logger.mode",
    "logger.project",
    "logger.entity",
    "logger.group",
    "logger.tags",
    "paths.cache_dir",
    "paths.models_dir",
    "paths.features_dir",
    "trainer.vision_cache",  # the same features, computed once (tests/test_features.py checks the equivalence)
    "trainer.vision_cache_memory_gb",  # where cached features are kept, not what they are
    "num_workers",
    "quiet",
    "logger.print_summary",
    "trainer.eval_batch_size",
    "trainer.eval_workers",  # the same batches, collated elsewhere (tests/test_predict_batched.py checks the answers)
    "trainer.preprocess",  # the same batches either way: checked on the first rows before training (vlmqc/preprocess.py)
    "trainer.preprocess_pixels",  # the same computation: bf16 only where the first use of the pixels is a bf16 op (vlmqc/preprocess.py)
)
if not OmegaConf.has_resolver("vlmqc.non_computing_keys"):
    OmegaConf.register_new_resolver("vlmqc.non_computing_keys", lambda: list(NON_COMPUTING_KEYS))
