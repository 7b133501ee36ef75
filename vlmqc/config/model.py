"""The ``model``, ``lora`` and ``image_size`` groups' schemas."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from vlmqc.config.checks import SEED_MAX, _between, _check


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
        _check(
            self.native_size % self.patch_size == 0,
            "tiny.native_size",
            self.native_size,
            f"must be a multiple of tiny.patch_size ({self.patch_size})",
        )
        _check(
            self.vocab_size >= 512, "tiny.vocab_size", self.vocab_size, "must be >= 512 (bytes, special tokens, merges)"
        )
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
    mrope_section: list[int] = field(
        default_factory=lambda: [16, 24, 24]
    )  # rotary frequencies for time, height, width; sums to head size / 2


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
        _check(
            t.hidden_size % heads == 0,
            "qwen2_vl.text.hidden_size",
            t.hidden_size,
            f"must be a multiple of text.num_attention_heads ({heads})",
        )
        _check(
            heads % kv == 0, "qwen2_vl.text.num_key_value_heads", kv, f"must divide text.num_attention_heads ({heads})"
        )
        half = t.hidden_size // heads // 2
        _check(
            len(t.mrope_section) == 3 and sum(t.mrope_section) == half,
            "qwen2_vl.text.mrope_section",
            t.mrope_section,
            f"must be 3 numbers summing to half the head size ({half})",
        )
        _check(
            v.embed_dim % (4 * v.num_heads) == 0,
            "qwen2_vl.vision.embed_dim",
            v.embed_dim,
            f"must be a multiple of 4 x vision.num_heads ({4 * v.num_heads})",
        )
        _check(
            self.tokenizer_vocab_size >= 512,
            "qwen2_vl.tokenizer_vocab_size",
            self.tokenizer_vocab_size,
            "must be >= 512 (bytes, special tokens, merges)",
        )
        _check(
            t.vocab_size >= self.tokenizer_vocab_size,
            "qwen2_vl.text.vocab_size",
            t.vocab_size,
            f"must be >= tokenizer_vocab_size ({self.tokenizer_vocab_size})",
        )
        side = v.patch_size * v.spatial_merge_size
        _check(
            self.min_pixels >= side * side,
            "qwen2_vl.min_pixels",
            self.min_pixels,
            f"must be >= {side * side} (one image token: {side} x {side} pixels)",
        )
        _check(
            self.max_pixels >= self.min_pixels,
            "qwen2_vl.max_pixels",
            self.max_pixels,
            f"must be >= min_pixels ({self.min_pixels})",
        )
        _between(t.rms_norm_eps, "qwen2_vl.text.rms_norm_eps", 0, 1, low_open=True)
        _between(t.rope_theta, "qwen2_vl.text.rope_theta", 0, low_open=True)
        _between(self.initializer_range, "qwen2_vl.initializer_range", 0, 1, low_open=True)
        _between(self.seed, "qwen2_vl.seed", 0, SEED_MAX)


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str | None = None  # a local checkpoint folder or a hub id; null = build the random model `random`
    random: str | None = (
        None  # the family whose random model path=null builds offline (vlmqc.models); null: path is required
    )
    trust_remote_code: bool = False  # only a model config that needs it sets it
    dtype: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | float32 | bfloat16 | float16
    attn_implementation: str | None = None  # e.g. sdpa, eager, flash_attention_2; null = the library's choice
    family: str | None = (
        None  # the model family (vlmqc.models) of the published checkpoint a preset names, for vlmqc.inspect
    )
    # the published checkpoint's processor settings (patch and merge size, pixel budget, tile size,
    # crops, image token count...: published facts), from which vlmqc.inspect builds the family's
    # processor offline, with no weights; keys are the family's (Family.offline_processor)
    processor: dict[str, Any] = field(default_factory=dict)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    qwen2_vl: Qwen2VLModelConfig = field(default_factory=Qwen2VLModelConfig)

    def __post_init__(self):
        if self.random is None and self.name == "tiny":
            self.random = "llava"  # the tiny preset, built in Python as ModelConfig(name="tiny")
        _check(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            self.dtype,
            "must be auto, float32, bfloat16 or float16",
        )
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


LORA_RANK_MAX = 4096


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
        _check(
            self.r <= LORA_RANK_MAX,
            "r",
            self.r,
            f"must be <= {LORA_RANK_MAX}: a rank above a layer's width is no longer low-rank (the adapter costs more "
            f"memory than the layer; the widest supported family's layers are 4096 wide)",
        )
        _check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")  # nan fails too


@dataclass
class ImageSizeConfig:
    name: str = MISSING
    size: int | None = (
        # side of the square input in pixels (Qwen2-VL: size x size pixels, aspect kept); null = the model's native
        # one
        None
    )

    def __post_init__(self):
        _check(
            self.size is None or 32 <= self.size <= 8192,
            "size",
            self.size,
            "must be between 32 and 8192 pixels, or null for the model's native resolution",
        )
