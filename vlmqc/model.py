"""Loading a VLM and its processor, setting the input resolution, and adding LoRA adapters.

Every model, the tiny one included, is loaded through ``AutoProcessor`` and
``AutoModelForImageTextToText.from_pretrained``, so the path a trial takes with the tiny model
is the path it takes with a real checkpoint (``model.path=<folder or hub id>``).

The tiny model is a real LLaVA (CLIP vision tower, projector, Llama language model) with random
weights and a byte-level BPE tokenizer trained offline on inspection vocabulary. It is built on
first use into ``paths.models_dir`` and reused: it needs no network, no GPU and no torchvision.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmqc.config import ConfigError, ImageSizeConfig, LoraConfig, LoraTarget, ModelConfig, TinyModelConfig
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


# ------------------------------------------------------------------------------------------ tiny


def _tiny_key(cfg: TinyModelConfig, size: int) -> str:
    spec = {"tiny": asdict(cfg), "size": size, "transformers": transformers.__version__, "template": CHAT_TEMPLATE, "corpus": _CORPUS}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _build_tiny(cfg: TinyModelConfig, size: int, path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN}
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
    final = Path(models_dir).expanduser() / f"tiny-{size}px-{_tiny_key(cfg, size)}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        _build_tiny(cfg, size, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------ loading


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def load(cfg: ModelConfig, image_size: ImageSizeConfig, models_dir: str, device: str) -> tuple[torch.nn.Module, object, str]:
    """The model and processor, the processor set to the requested resolution; and the path."""
    path = str(tiny_checkpoint(cfg.tiny, image_size.size, models_dir)) if cfg.path is None else cfg.path
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    kwargs = {"dtype": resolve_dtype(cfg.dtype, device), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    set_image_size(processor, model, image_size)
    return model, processor, path


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
    raise ConfigError(f"image_size.size={cfg.size}: setting the resolution of a {model_type!r} model is not supported yet; use image_size=native")


# -------------------------------------------------------------------------------- adapters


def _part(name: str) -> str:
    """Which part of a VLM a module belongs to, from its qualified name."""
    if "language_model" in name or name.startswith("model.layers") or name.startswith("layers."):
        return "language"
    if any(k in name for k in ("vision", "visual", "image_encoder")):
        return "vision"
    if any(k in name for k in ("projector", "merger", "connector")):
        return "projector"
    return "other"


def adapt(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """LoRA adapters (PEFT) on the chosen linear layers, or full fine-tuning; the rest frozen."""
    if cfg.full:
        for name, p in model.named_parameters():
            p.requires_grad = _part(name) != "vision" or cfg.train_vision
        return model
    parts = {LoraTarget.language: {"language"}, LoraTarget.language_vision: {"language", "vision", "projector"}, LoraTarget.all_linear: {"language", "vision", "projector", "other"}}[
        LoraTarget(cfg.target)
    ]
    output = model.get_output_embeddings()
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output and _part(n) in parts]
    if not targets:
        raise ConfigError(f"lora.target={cfg.target.value}: no linear layer of this model matches")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    return get_peft_model(model, peft_cfg)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
