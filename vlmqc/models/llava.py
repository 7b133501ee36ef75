"""LLaVA (1.5): a CLIP tower of one fixed resolution, an MLP projector, a Llama language model.

Its tiny model (``model=tiny``, ``model.random=llava``) is a real LLaVA with random weights and
the offline tokenizer: built once per resolution, since a CLIP tower is built for one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from vlmqc.config import ConfigError, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN, "<|user|>", "<|assistant|>"]
# User turn: images then text; assistant turn: text then </s>. The assistant marker is a special
# token, so the prompt alone always tokenizes to a prefix of prompt + answer.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<|user|>\\n' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% else %}{{ c['text'] }}{% endif "
    "%}{% endfor %}"
    "{{ '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' }}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def tiny_config(t, size: int, tokenizer):
    """The LlavaConfig of the tiny model: ``t``'s (model.tiny) sizes, a CLIP tower of ``size``
    pixels, a Llama text model with ``tokenizer``'s ids (phi3_v's tiny model is this one too)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            **offline.vision_shape(t, image_size=size, patch_size=t.patch_size, projection_dim=t.vision_hidden)
        ),
        text_config=LlamaConfig(**offline.text_shape(t, tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        initializer_range=t.init_std,
    )


class Llava(Family):
    name = "llava"
    model_types = ("llava",)
    multi_image = False  # LLaVA-1.5 was trained on one image per conversation
    bf16_pixels = True  # CLIPVisionEmbeddings: pixel_values.to(weight dtype), then the patch conv, bf16 under autocast
    parts = {"projector": r"multi_modal_projector", "vision": r"vision_tower", "language": r"language_model"}

    def set_image_size(self, processor, model, size: int) -> None:
        native = model.config.vision_config.image_size
        if native != size:
            raise ConfigError(
                f"image_size.size={size}: this llava model's vision tower was built for {native} x {native} "
                f"pixels (a fixed size); use image_size=native or {native}"
            )
        ip = processor.image_processor
        ip.size = {"height": size, "width": size}
        ip.do_center_crop = False  # the whole image, not its centre square

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        size = size or cfg.tiny.native_size
        # the key as before the models package: existing tiny models are reused
        return f"tiny-{size}px-{offline.key({'tiny': asdict(cfg.tiny), 'size': size, 'template': CHAT_TEMPLATE})}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import LlavaForConditionalGeneration, LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        t = cfg.tiny
        size = size or t.native_size
        tokenizer = offline.tokenizer(
            t.vocab_size,
            SPECIAL_TOKENS,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": IMAGE_TOKEN},
        )
        # PIL processor: no torchvision needed; the whole image is resized to the square input
        image_processor = CLIPImageProcessorPil(
            size={"height": size, "width": size}, do_center_crop=False, crop_size={"height": size, "width": size}
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=t.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
        )
        config = tiny_config(t, size, tokenizer)
        model = offline.random_model(LlavaForConditionalGeneration, config, t.seed, tokenizer)
        model.save_pretrained(path)
        processor.save_pretrained(path)

    def offline_processor(self, facts: dict):
        # facts, as the checkpoint publishes them: image_size, patch_size (config.json's
        # vision_config), crop_size and shortest_edge (preprocessor_config.json),
        # vision_feature_select_strategy, num_additional_image_tokens (the CLS token), and the
        # text_config / vision_config shapes the memory estimate reads. LLaVA-1.5's processor
        # resizes the shortest edge to 336, then crops the centre 336 x 336: 24 x 24 = 576 tokens.
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        size, crop = facts["image_size"], facts.get("crop_size", facts["image_size"])
        tokenizer = offline.tokenizer(
            1024,
            SPECIAL_TOKENS,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": IMAGE_TOKEN},
        )
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": facts.get("shortest_edge", size)},
            do_center_crop=facts.get("do_center_crop", True),
            crop_size={"height": crop, "width": crop},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=facts["patch_size"],
            vision_feature_select_strategy=facts.get("vision_feature_select_strategy", "default"),
            num_additional_image_tokens=facts.get("num_additional_image_tokens", 1),
            chat_template=CHAT_TEMPLATE,
            image_token=IMAGE_TOKEN,
        )
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(
                **{**facts.get("vision_config", {}), "image_size": size, "patch_size": facts["patch_size"]}
            ),
            text_config=LlamaConfig(**facts.get("text_config", {})),
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_select_strategy=facts.get("vision_feature_select_strategy", "default"),
        )
        return processor, config
