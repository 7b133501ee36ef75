"""Phi-4-multimodal: a SigLIP tower on 448-pixel crops (dynamic HD: up to ``dynamic_hd`` crops of
the resized image plus a global view), a Phi-4-mini language model, a speech encoder; several
images per turn. Two model types load through this family: ``phi4mm``, the published checkpoint's
remote code (``trust_remote_code: true``, ``AutoModelForCausalLM``, ``<|image_1|>`` placeholders),
and ``phi4_multimodal``, transformers' native port (a converted checkpoint, ``<|image|>``).

``image_size=S`` is a crop budget: ``S x S`` pixels hold ``S*S // 448**2`` crops, which becomes the
processor's ``dynamic_hd``; a size smaller than one crop is refused.

Not registered in ``FAMILY_MODULES`` yet: transformers' Phi-4 image processor exists only with
torchvision, so neither a tiny model nor the offline processor can be built on a machine without
it; they are to be run on the GPU machine (tests/test_phi4_multimodal.py skips without it).
"""

from __future__ import annotations

from vlmqc.config import ConfigError
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


class Phi4Multimodal(Family):
    name = "phi4_multimodal"
    model_types = ("phi4_multimodal", "phi4mm")
    multi_image = True
    # model.embed_tokens_extend.{image_embed.{img_processor, img_projection_*}, audio_embed}, model.layers
    # (native; the remote code's names are the same); the audio encoder is "other" (all_linear only)
    parts = {
        "projector": r"image_embed\.img_projection",
        "vision": r"image_embed\.img_processor",
        "language": r"^model\.layers\.",
    }

    def set_image_size(self, processor, model, size: int) -> None:
        ip = processor.image_processor
        crop = ip.size["height"] if isinstance(ip.size, dict) else ip.size.height
        crops = size * size // (crop * crop)
        if crops < 1:
            raise ConfigError(
                f"image_size.size={size}: phi4_multimodal cuts images into {crop} x {crop} crops and image_size is a budget of size x size pixels in whole crops (dynamic_hd); "
                f"use a size >= {crop} (one crop; {2 * crop} holds 4)"
            )
        ip.dynamic_hd = crops

    def text(self, processor, instruction: str, images: int, answer: str | None) -> str:
        # the native processor expands <|image|>; the remote code numbers its images
        native = getattr(processor, "image_token", None) == IMAGE
        placeholders = IMAGE * images if native else "".join(f"<|image_{i}|>" for i in range(1, images + 1))
        turns = [{"role": "user", "content": placeholders + instruction}]
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        return processor.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=answer is None)

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        # image_pixel_values: (images, global view + crops, 3, 448, 448), padded to the most crops;
        # image_sizes: each image's HD size, whose 448-pixel grid is its real crops
        pixels = batch["image_pixel_values"]
        crop = pixels.shape[-1]
        token = getattr(processor, "image_token_id", None)
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[list(pixels.shape[-2:])] * len(images),
            tiles=[(int(h) // crop) * (int(w) // crop) + 1 for h, w in batch["image_sizes"]],
            image_tokens=int((batch["input_ids"] == token).sum()) if token is not None else 0,
        )

    def offline_processor(self, facts: dict):
        """Facts (conf/model/phi4_multimodal.yaml): ``crop_size``, ``patch_size``, ``dynamic_hd``.
        The native processor and config; needs torchvision (the image processor's)."""
        from transformers import Phi4MultimodalConfig, Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available():
            raise ConfigError("phi4_multimodal: transformers' Phi-4 image processor needs torchvision, which is not installed here")
        from transformers.models.phi4_multimodal.image_processing_phi4_multimodal import Phi4MultimodalImageProcessor

        tokenizer = offline.tokenizer(
            1024, TOKENS, eos_token="<|end|>", pad_token="<|endoftext|>", extra_special_tokens={"image_token": IMAGE, "audio_token": AUDIO}
        )
        tokenizer.chat_template = TEMPLATE
        crop = facts["crop_size"]
        image_processor = Phi4MultimodalImageProcessor(size={"height": crop, "width": crop}, patch_size=facts["patch_size"], dynamic_hd=facts["dynamic_hd"])
        processor = Phi4MultimodalProcessor(image_processor=image_processor, audio_processor=Phi4MultimodalFeatureExtractor(), tokenizer=tokenizer)
        config = Phi4MultimodalConfig(
            vision_config={"crop_size": crop, "patch_size": facts["patch_size"], "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE)},
            audio_config={"audio_token_id": tokenizer.convert_tokens_to_ids(AUDIO)},
        )
        return processor, config
