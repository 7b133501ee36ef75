"""Loading a VLM and its processor, setting the input resolution, and adding LoRA adapters.

Every model, the tiny one included, is loaded through ``AutoProcessor`` and
``AutoModelForImageTextToText.from_pretrained``, so the path a trial takes with the tiny model
is the path it takes with a real checkpoint (``model.path=<folder or hub id>``).

The tiny model is a real LLaVA (CLIP vision tower, projector, Llama language model) with random
weights and a byte-level BPE tokenizer trained offline on inspection vocabulary. It is built on
first use into ``paths.models_dir`` and reused: it needs no network, no GPU and no torchvision.

``model=qwen2_vl_2b_random`` is built the same way: a Qwen2-VL with the exact shape of
Qwen2-VL-2B-Instruct (2.2 B parameters, random bf16 weights, 4.4 GB on disk), the same tokenizer
with Qwen's special tokens, and Qwen's chat format; for measuring speed and memory at a realistic
size. Its shape fields (``model.qwen2_vl.*``) shrink it for tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, Qwen2VLConfig, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from vlmqc.config import ConfigError, ImageSizeConfig, LoraConfig, LoraTarget, ModelConfig, Qwen2VLModelConfig, RandomModel, TinyModelConfig
from vlmqc.labels import DEFECT_NAMES, POSITIONS

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN, "<|user|>", "<|assistant|>"]
# User turn: image then text; assistant turn: text then </s>. The assistant marker is a special
# token, so the prompt alone always tokenizes to a prefix of prompt + answer.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<|user|>\\n' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' }}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# What the tiny tokenizer is trained on: the words of instructions and answers, in English
# and Japanese. Any other text still encodes, byte by byte.
_CORPUS = [
    "The image holds two images. Coordinates are printed: 1 to 9 across, U, C, D down.",
    "Compare the top and the bottom product position by position. The top product passed inspection.",
    "Does the bottom product pass, or is it defective? If defective, say where and what the defect is.",
    "The bottom product passed. The bottom product is defective: ",
    "Find the red star among the other marks and answer its coordinate. The red star is at ",
    "The image shows where a candidate differs from a passed reference.",
    '{"verdict": "pass"} {"verdict": "defective", "defects": [{"position": "C5", "type": "missing"}]} {"position": "U3"}',
    "上の製品は合格品です。下の製品は合格ですか、不良ですか。不良なら位置と不良の種類を答えてください。",
    "座標は横に1から9、縦にU、C、Dです。赤い星の位置を答えてください。合格 不良 端子欠落 端子ずれ 形状違い 端子焦げ 異物 端子変形",
    " ".join(POSITIONS),
    " ".join(DEFECT_NAMES.values()),
]


# --------------------------------------------------------------------------------- built offline


def _key(spec: dict) -> str:
    """A built model's cache key: what it is built from, the library that builds it, the corpus."""
    spec = {**spec, "transformers": transformers.__version__, "corpus": _CORPUS}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _built(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, built by ``build`` into a temporary folder and renamed into place, unless it is there."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same build first
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tokenizer(vocab_size: int, special_tokens: list[str], **kwargs):
    """A byte-level BPE trained on ``_CORPUS``; ``kwargs`` name its special tokens' roles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **kwargs)


def _tiny_key(cfg: TinyModelConfig, size: int) -> str:
    return _key({"tiny": asdict(cfg), "size": size, "template": CHAT_TEMPLATE})


def _build_tiny(cfg: TinyModelConfig, size: int, path: Path) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _tokenizer(
        cfg.vocab_size, SPECIAL_TOKENS, bos_token="<s>", eos_token="</s>", pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN}
    )
    # PIL processor: no torchvision needed; the whole image is resized to the square input
    image_processor = CLIPImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    heads = max(1, cfg.text_hidden // 16)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=cfg.vision_hidden,
            intermediate_size=4 * cfg.vision_hidden,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=max(1, cfg.vision_hidden // 16),
            image_size=size,
            patch_size=cfg.patch_size,
            projection_dim=cfg.vision_hidden,
            initializer_range=cfg.init_std,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            initializer_range=cfg.init_std,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        initializer_range=cfg.init_std,
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)


def tiny_checkpoint(cfg: TinyModelConfig, size: int | None, models_dir: str | os.PathLike) -> Path:
    """The tiny model's folder for this resolution, built (atomically) if it is not there yet.

    A CLIP tower is built for one resolution, so the tiny model is built once per image size.
    """
    size = size or cfg.native_size
    return _built(Path(models_dir).expanduser() / f"tiny-{size}px-{_tiny_key(cfg, size)}", lambda path: _build_tiny(cfg, size, path))


# Qwen2-VL's special tokens (the ones its chat format and processor use) and a chat template in its
# format, images only. The assistant turn starts with a fixed header, so the prompt alone always
# tokenizes to a prefix of prompt + answer.
QWEN2_VL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN2_VL_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def qwen2_vl_config(cfg: Qwen2VLModelConfig, token_ids: dict[str, int]) -> Qwen2VLConfig:
    """The transformers config of a random Qwen2-VL, given the ids of ``QWEN2_VL_TOKENS``."""
    t, v = cfg.text, cfg.vision
    text = {k: val for k, val in asdict(t).items() if k not in ("rope_theta", "mrope_section")}
    return Qwen2VLConfig(
        text_config={
            **text,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
            "initializer_range": cfg.initializer_range,
            "bos_token_id": token_ids["<|endoftext|>"],
            "eos_token_id": token_ids["<|im_end|>"],
            "pad_token_id": token_ids["<|endoftext|>"],
        },
        vision_config={**asdict(v), "hidden_size": t.hidden_size, "initializer_range": cfg.initializer_range},
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def _build_qwen2_vl(cfg: Qwen2VLModelConfig, path: Path) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(
        cfg.tokenizer_vocab_size,
        QWEN2_VL_TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    tokenizer.chat_template = QWEN2_VL_TEMPLATE
    # PIL processor: no torchvision needed. Images keep their aspect ratio within the pixel budget.
    v = cfg.vision
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size,
    )
    config = qwen2_vl_config(cfg, {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_TOKENS})
    torch.manual_seed(cfg.seed)
    # random weights lose nothing in bf16, which halves the 2B model on disk; a GPU trial loads bf16 anyway
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.save_pretrained(path)
    # the files of a published Qwen2-VL checkpoint: AutoProcessor assembles Qwen2VLProcessor from them
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    (path / "chat_template.jinja").write_text(QWEN2_VL_TEMPLATE)


def qwen2_vl_checkpoint(cfg: Qwen2VLModelConfig, models_dir: str | os.PathLike) -> Path:
    """The random Qwen2-VL's folder, built (atomically) if it is not there yet."""
    key = _key({"qwen2_vl": asdict(cfg), "template": QWEN2_VL_TEMPLATE})
    return _built(Path(models_dir).expanduser() / f"qwen2_vl-random-{key}", lambda path: _build_qwen2_vl(cfg, path))


def random_checkpoint(cfg: ModelConfig, size: int | None, models_dir: str | os.PathLike) -> Path:
    """The folder of the random model ``cfg.random``, built if it is not there yet."""
    if cfg.random == RandomModel.qwen2_vl:
        return qwen2_vl_checkpoint(cfg.qwen2_vl, models_dir)
    return tiny_checkpoint(cfg.tiny, size, models_dir)


def processed_resolution(model, batch: dict) -> list[int] | None:
    """Height and width in pixels of the image the vision tower really saw, for a batch of one.

    A fixed-size tower's ``pixel_values`` are the image itself; Qwen2-VL's are flattened patches,
    and its ``image_grid_thw`` gives the patch grid."""
    if "image_grid_thw" in batch:
        _, h, w = (int(x) for x in batch["image_grid_thw"][0])
        patch = model.config.vision_config.patch_size
        return [h * patch, w * patch]
    if "pixel_values" in batch:
        return list(batch["pixel_values"].shape[-2:])
    return None


# ------------------------------------------------------------------------------ loading


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def load(cfg: ModelConfig, image_size: ImageSizeConfig, models_dir: str, device: str) -> tuple[torch.nn.Module, object, str]:
    """The model and processor, the processor set to the requested resolution; and the path."""
    path = str(random_checkpoint(cfg, image_size.size, models_dir)) if cfg.path is None else cfg.path
    processor = load_processor(path, cfg.trust_remote_code)
    kwargs = {"dtype": resolve_dtype(cfg.dtype, device), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    set_image_size(processor, model, image_size)
    return model, processor, path


class _Qwen2VLImagesOnlyProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor, which transformers builds only with torchvision.

    The processor's attributes are read from this signature, so it loads and checks only an image
    processor and a tokenizer; images and text behave exactly as in Qwen2VLProcessor.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def load_processor(path: str, trust_remote_code: bool = False):
    """The checkpoint's processor through ``AutoProcessor``; a Qwen2-VL's without its video half
    where torchvision is missing (a trial uses images and text only)."""
    if not is_torchvision_available() and AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type == "qwen2_vl":
        return _Qwen2VLImagesOnlyProcessor.from_pretrained(path)
    return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)


def set_image_size(processor, model, cfg: ImageSizeConfig) -> None:
    """Point the processor's own resolution knobs at ``cfg.size``.

    Only what a model family really supports is set; anything else fails with the key to change,
    rather than silently processing at another resolution.
    """
    if cfg.size is None:
        return
    model_type = model.config.model_type
    if model_type in ("llava",):
        native = model.config.vision_config.image_size
        if native != cfg.size:
            raise ConfigError(
                f"image_size.size={cfg.size}: this {model_type} model's vision tower was built for {native} x {native} pixels; use image_size=native or {native}"
            )
        ip = processor.image_processor
        ip.size = {"height": cfg.size, "width": cfg.size}
        ip.do_center_crop = False  # the whole image, not its centre square
        return
    if model_type in ("qwen2_vl",):
        # a pixel budget, not a square: the processor keeps the aspect ratio, scaling down to fit
        ip = processor.image_processor
        lowest = ip.size["shortest_edge"]
        if cfg.size * cfg.size < lowest:
            raise ConfigError(
                f"image_size.size={cfg.size}: this {model_type} processor scales every image up to at least {lowest} pixels; use a size >= {math.isqrt(lowest - 1) + 1}"
            )
        ip.size = {"shortest_edge": lowest, "longest_edge": cfg.size * cfg.size}
        return
    raise ConfigError(f"image_size.size={cfg.size}: setting the resolution of a {model_type!r} model is not supported yet; use image_size=native")


# -------------------------------------------------------------------------------- adapters


def _part(name: str) -> str:
    """Which part of a VLM a module belongs to, from its qualified name."""
    if "language_model" in name or name.startswith("model.layers") or name.startswith("layers."):
        return "language"
    if any(k in name for k in ("projector", "merger", "connector")):  # before vision: Qwen2-VL's is model.visual.merger
        return "projector"
    if any(k in name for k in ("vision", "visual", "image_encoder")):
        return "vision"
    return "other"


def adapt(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """LoRA adapters (PEFT) on the chosen linear layers, or full fine-tuning; the rest frozen."""
    if cfg.full:
        for name, p in model.named_parameters():
            p.requires_grad = _part(name) != "vision" or cfg.train_vision
        return model
    parts = {
        LoraTarget.language: {"language"},
        LoraTarget.language_vision: {"language", "vision", "projector"},
        LoraTarget.all_linear: {"language", "vision", "projector", "other"},
    }[LoraTarget(cfg.target)]
    output = model.get_output_embeddings()
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output and _part(n) in parts]
    if not targets:
        raise ConfigError(f"lora.target={cfg.target.value}: no linear layer of this model matches")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    return get_peft_model(model, peft_cfg)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
