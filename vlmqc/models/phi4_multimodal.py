"""Phi-4-multimodal (``model_type: phi4_multimodal``, transformers' native port): a SigLIP tower on
448-pixel crops of 14-pixel patches, 2 x 2 pooled (256 tokens a crop), dynamic HD (up to
``dynamic_hd`` crops of the resized image plus a global view), a Phi-4-mini language model and a
speech encoder; ``<|image|>`` placeholders, which the processor expands; several images per turn.
Loaded through ``AutoModelForCausalLM`` (transformers maps phi4_multimodal there, not to
image-text-to-text), without remote code.

The published checkpoint's main branch (``model_type: phi4mm``) is Microsoft's remote code, written
for transformers 4.48: it is refused, naming the native conversion to load instead (the hub's
revision ``refs/pr/70``). That conversion keeps the vision LoRA of the language model apart, as a
PEFT adapter in ``vision-lora/``; ``load_model`` merges it, as the model card's image examples
switch it on, so the model a trial fine-tunes is the published vision model.

``image_size=S`` is a crop budget: ``S x S`` pixels hold ``S*S // 448**2`` crops, which becomes
the processor's ``dynamic_hd``; a size smaller than one crop is refused. ``dynamic_hd`` only caps:
an image of w x h pixels gets ceil(w/448) x ceil(h/448) crops when they fit in it.

The image processor exists only with torchvision (transformers has no PIL one for this family), so
the tiny model and the offline processor are built where torchvision is (the GPU machine); without
it they are refused with a ConfigError saying so, and their tests skip.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.utils import is_torchvision_available

from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

IMAGE, AUDIO = "<|image|>", "<|audio|>"
TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", IMAGE, AUDIO]
# Phi-4-multimodal's turns: '<|role|>' + content + '<|end|>', no newline after the role. The
# assistant header is fixed, so the prompt alone tokenizes to a prefix of prompt + answer.
TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '<|assistant|>' }}{% endif %}"
)
# The tiny model keeps the published 448-pixel crops of 14-pixel patches: the image processor counts
# a crop's tokens with the published constants (256 a crop, 16 a row of the global view), so another
# crop or patch size would count tokens the tower does not make. It is kept small in width and depth.
CROP, PATCH, TINY_DYNAMIC_HD = 448, 14, 4
# the smallest speech encoder the config accepts: the model builds one whether or not audio is used
TINY_AUDIO = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_blocks": 1,
    "num_attention_heads": 2,
    "ext_pw_out_channel": 32,
    "depthwise_separable_out_channel": 32,
    "nemo_conv_channels": 32,
}
VISION_LORA = "vision-lora"  # the native conversion's folder of the language model's vision LoRA (PEFT)


def _refuse_remote_code(model_type: str | None, path: str) -> None:
    if model_type == "phi4mm":
        raise ConfigError(
            f"model.path={path}: model_type phi4mm is the published main branch's remote code (written for "
            f"transformers 4.48), which vlmqc does not run; "
            "the phi4_multimodal family loads transformers' native port: download the hub's conversion "
            "(hf download microsoft/Phi-4-multimodal-instruct --revision refs/pr/70 --local-dir DIR) and give "
            "model.path=DIR"
        )


def _tokenizer(vocab_size: int):
    tokenizer = offline.tokenizer(
        vocab_size,
        TOKENS,
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": IMAGE, "audio_token": AUDIO},
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _processor(tokenizer, crop: int, patch: int, dynamic_hd: int):
    """Phi4MultimodalProcessor with the given crops; a ConfigError where torchvision is missing."""
    if not is_torchvision_available():
        raise ConfigError(
            "phi4_multimodal: transformers' Phi-4 image processor exists only with torchvision, which is not "
            "installed here"
        )
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor
    from transformers.models.phi4_multimodal.image_processing_phi4_multimodal import Phi4MultimodalImageProcessor

    image_processor = Phi4MultimodalImageProcessor(
        size={"height": crop, "width": crop}, patch_size=patch, dynamic_hd=dynamic_hd
    )
    return Phi4MultimodalProcessor(
        image_processor=image_processor, audio_processor=Phi4MultimodalFeatureExtractor(), tokenizer=tokenizer
    )


class Phi4Multimodal(Family):
    name = "phi4_multimodal"
    model_types = ("phi4_multimodal", "phi4mm")  # phi4mm: only to refuse it, naming the native conversion
    multi_image = True
    requires = ("torchvision",)
    # model.embed_tokens_extend.{image_embed.{img_processor, img_projection_up/down}, audio_embed},
    # model.layers; the speech encoder is "other" (all_linear only)
    parts = {
        "projector": r"image_embed\.img_projection",
        "vision": r"image_embed\.img_processor",
        "language": r"^model\.layers\.",
    }

    def check(self, cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
        super().check(cfg, image_size, layout)
        config = Path(cfg.path) / "config.json" if cfg.path is not None else None
        if config is not None and config.is_file():  # a local folder, read as data; a hub id is read at load
            _refuse_remote_code(json.loads(config.read_text()).get("model_type"), cfg.path)

    def auto_class(self, trust_remote_code: bool) -> type:
        return AutoModelForCausalLM

    def load_processor(self, path: str, trust_remote_code: bool):
        _refuse_remote_code(PretrainedConfig.get_config_dict(path)[0].get("model_type"), path)
        if not is_torchvision_available():
            raise ConfigError(
                "phi4_multimodal: transformers' Phi-4 image processor exists only with torchvision, which is not "
                "installed here"
            )
        return super().load_processor(path, trust_remote_code)

    def load_model(self, path: str, trust_remote_code: bool, **kwargs) -> torch.nn.Module:
        model = super().load_model(path, trust_remote_code, **kwargs)
        lora = Path(path) / VISION_LORA
        if (lora / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(lora)).merge_and_unload()
        return model

    def set_image_size(self, processor, model, size: int) -> None:
        ip = processor.image_processor
        crop = ip.size["height"] if isinstance(ip.size, dict) else ip.size.height
        crops = size * size // (crop * crop)
        if crops < 1:
            raise ConfigError(
                f"image_size.size={size}: phi4_multimodal cuts images into {crop} x {crop} crops and image_size "
                f"is a budget of size x size pixels in whole crops (dynamic_hd); "
                f"use a size >= {crop} (one crop; {2 * crop} holds 4)"
            )
        ip.dynamic_hd = crops

    def text(self, processor, instruction: str, images: int, answer: str | None) -> str:
        turns = [{"role": "user", "content": IMAGE * images + instruction}]
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        return processor.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=answer is None)

    def image_token_id(self, processor, model) -> int | None:
        return processor.image_token_id

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        # image_pixel_values: (images, global view + crops, 3, 448, 448), padded to the most crops;
        # image_sizes: each image's HD size, whose 448-pixel grid is its real crops
        pixels = batch["image_pixel_values"]
        crop = pixels.shape[-1]
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[list(pixels.shape[-2:])] * len(images),
            tiles=[(int(h) // crop) * (int(w) // crop) + 1 for h, w in batch["image_sizes"]],
            image_tokens=int((batch["input_ids"] == processor.image_token_id).sum()),
        )

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every resolution: the crop budget is the processor's
        spec = {
            "tiny": asdict(cfg.tiny),
            "crop": CROP,
            "patch": PATCH,
            "dynamic_hd": TINY_DYNAMIC_HD,
            "audio": TINY_AUDIO,
            "template": TEMPLATE,
        }
        return f"phi4_multimodal-random-{offline.key(spec)}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

        t = cfg.tiny
        tokenizer = _tokenizer(t.vocab_size)
        processor = _processor(tokenizer, CROP, PATCH, TINY_DYNAMIC_HD)
        config = Phi4MultimodalConfig(
            **offline.text_shape(t, tokenizer),
            vision_config=offline.vision_shape(
                t, image_size=CROP, crop_size=CROP, patch_size=PATCH, image_token_id=processor.image_token_id
            ),
            audio_config={**TINY_AUDIO, "audio_token_id": processor.audio_token_id},
        )
        model = offline.random_model(Phi4MultimodalForCausalLM, config, t.seed, tokenizer)
        model.save_pretrained(path)
        processor.save_pretrained(path)

    def offline_processor(self, facts: dict):
        """Facts (conf/model/phi4_multimodal.yaml): ``crop_size``, ``patch_size``, ``dynamic_hd``.
        The native processor and config; needs torchvision (the image processor's)."""
        from transformers import Phi4MultimodalConfig

        processor = _processor(_tokenizer(1024), facts["crop_size"], facts["patch_size"], facts["dynamic_hd"])
        config = Phi4MultimodalConfig(
            vision_config={
                "crop_size": facts["crop_size"],
                "patch_size": facts["patch_size"],
                "image_token_id": processor.image_token_id,
            },
            audio_config={"audio_token_id": processor.audio_token_id},
        )
        return processor, config
