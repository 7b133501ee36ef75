"""Qwen2-VL: images at their own aspect ratio within a pixel budget, 14-pixel patches merged 2 x 2
into image tokens, several images per turn.

``model=qwen2_vl_2b_random`` (``model.random=qwen2_vl``) builds a Qwen2-VL with the shape of
``model.qwen2_vl`` (Qwen2-VL-2B-Instruct by default: 2.2 B parameters, random bf16 weights, 4.4 GB),
the offline tokenizer with Qwen's special tokens, and Qwen's chat format.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import torch
from transformers import AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from vlmqc.config import (
    ConfigError,
    ImageSizeConfig,
    Layout,
    ModelConfig,
    Qwen2VLModelConfig,
    Qwen2VLTextShape,
    Qwen2VLVisionShape,
)
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

# Qwen2-VL's special tokens (the ones its chat format and processor use) and a chat template in its
# format, images only. The assistant turn starts with a fixed header, so the prompt alone always
# tokenizes to a prefix of prompt + answer.
TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful "
    "assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ "
    "'<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _ImagesOnlyProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor, which transformers builds only with torchvision.

    The processor's attributes are read from this signature, so it loads and checks only an image
    processor and a tokenizer; images and text behave exactly as in Qwen2VLProcessor.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# what a preset's model.processor may say: the keys of the published preprocessor_config.json that
# set what the model sees (Qwen2-VL and Qwen2.5-VL name the pixel budget min_pixels / max_pixels,
# Qwen3-VL size: {shortest_edge, longest_edge}; the image processor takes either)
FACTS = (
    "patch_size",
    "temporal_patch_size",
    "merge_size",
    "min_pixels",
    "max_pixels",
    "size",
    "image_mean",
    "image_std",
)


def tokenizer(vocab_size: int, template: str):
    """The offline BPE with Qwen's special tokens, roles and chat ``template``."""
    tok = offline.tokenizer(
        vocab_size,
        TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    tok.chat_template = template
    return tok


def token_ids(tok) -> dict[str, int]:
    """The ids a Qwen-VL config names: image, video, vision start and end."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def save(path: Path, model, tok, image_processor, template: str) -> None:
    """The files of a published Qwen-VL checkpoint: AutoProcessor assembles the processor from them."""
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    image_processor.save_pretrained(path)
    (path / "chat_template.jinja").write_text(template)


def config(cfg: Qwen2VLModelConfig, token_ids: dict[str, int]) -> Qwen2VLConfig:
    """The transformers config of a random Qwen2-VL, given the ids of ``TOKENS``."""
    t, v = cfg.text, cfg.vision
    text = {k: val for k, val in asdict(t).items() if k not in ("rope_theta", "mrope_section")}
    return Qwen2VLConfig(
        text_config={
            **text,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
            },
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


class Qwen2VL(Family):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    multi_image = True
    parts = {"projector": r"visual\.merger", "vision": r"visual\.", "language": r"language_model"}
    # what differs between Qwen2-VL, Qwen2.5-VL and Qwen3-VL (qwen2_5_vl.py, qwen3_vl.py subclass this)
    config_class: ClassVar[type] = Qwen2VLConfig
    images_only: ClassVar[type] = _ImagesOnlyProcessor  # the processor class without its video half
    template: ClassVar[str] = TEMPLATE

    def random_min_pixels(self, cfg: ModelConfig) -> tuple[str, int]:
        """The random model's pixel floor, and the key that sets it."""
        return "model.qwen2_vl.min_pixels", cfg.qwen2_vl.min_pixels

    def check(self, cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
        super().check(cfg, image_size, layout)
        if cfg.path is None and image_size.size is not None:
            key, lowest = self.random_min_pixels(cfg)  # the built processor's floor
            if image_size.size * image_size.size < lowest:
                raise ConfigError(
                    f"image_size.size={image_size.size}: the {self.name} processor scales every image up to {key} "
                    f"({lowest}); use a size >= {math.isqrt(lowest - 1) + 1}"
                )

    def load_processor(self, path: str, trust_remote_code: bool):
        # a trial uses images and text only: without torchvision, the processor without its video half
        if not is_torchvision_available():
            return self.images_only.from_pretrained(path)
        return super().load_processor(path, trust_remote_code)

    def set_image_size(self, processor, model, size: int) -> None:
        # a pixel budget, not a square: the processor keeps the aspect ratio, scaling down to fit
        ip = processor.image_processor
        lowest = ip.size["shortest_edge"]
        if size * size < lowest:
            raise ConfigError(
                f"image_size.size={size}: this {self.name} processor scales every image up to at least {lowest} "
                f"pixels (min_pixels); use a size >= {math.isqrt(lowest - 1) + 1}"
            )
        ip.size = {"shortest_edge": lowest, "longest_edge": size * size}

    def offline_processor(self, facts: dict):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        # the processor's keys as preprocessor_config.json publishes them, and the text_config /
        # vision_config shapes of config.json that vlmqc.inspect's memory estimate reads
        shapes = ("text_config", "vision_config")
        unknown = sorted(set(facts) - set(FACTS) - set(shapes))
        if unknown:
            raise ConfigError(
                f"model.processor: {', '.join(unknown)} unknown to the {self.name} family; it reads "
                f"{', '.join((*FACTS, *shapes))}"
            )
        # every Qwen-VL processor is Qwen2-VL's image processor with the checkpoint's patch, merge and budget
        image_processor = Qwen2VLImageProcessorPil(
            **{k: dict(v) if k == "size" else v for k, v in facts.items() if k not in shapes}
        )
        tok = tokenizer(1024, self.template)
        processor = self.images_only(image_processor=image_processor, tokenizer=tok, chat_template=self.template)
        vision = {
            **dict(facts.get("vision_config", {})),
            "patch_size": image_processor.patch_size,
            "spatial_merge_size": image_processor.merge_size,
            "temporal_patch_size": image_processor.temporal_patch_size,
        }
        return processor, self.config_class(
            text_config=dict(facts.get("text_config", {})), vision_config=vision, **token_ids(tok)
        )

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        # pixel_values are flattened patches; image_grid_thw is each image's patch grid
        patch = model.config.vision_config.patch_size
        grids = [[int(x) for x in thw] for thw in batch["image_grid_thw"]]
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[[h * patch, w * patch] for _, h, w in grids],
            tiles=[1] * len(grids),
            image_tokens=int((batch["input_ids"] == model.config.image_token_id).sum()),
        )

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every resolution (the budget is the processor's); the key as before the models package
        return f"qwen2_vl-random-{offline.key({'qwen2_vl': asdict(cfg.qwen2_vl), 'template': TEMPLATE})}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        q = cfg.qwen2_vl
        tok = tokenizer(q.tokenizer_vocab_size, TEMPLATE)
        # PIL processor: no torchvision needed. Images keep their aspect ratio within the pixel budget.
        v = q.vision
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": q.min_pixels, "longest_edge": q.max_pixels},
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            merge_size=v.spatial_merge_size,
        )
        torch.manual_seed(q.seed)
        # random weights lose nothing in bf16, which halves the 2B model on disk; a GPU trial loads bf16 anyway
        model = AutoModelForImageTextToText.from_config(
            config(q, {t: tok.convert_tokens_to_ids(t) for t in TOKENS}), dtype=torch.bfloat16
        )
        save(path, model, tok, image_processor, TEMPLATE)

    def tiny_config(self) -> ModelConfig:
        # model.tiny's sizes in Qwen2-VL's shape block; mrope_section sums to half the head size (16 / 2)
        from vlmqc.config import TinyModelConfig

        t = TinyModelConfig()
        shape = Qwen2VLModelConfig(
            text=Qwen2VLTextShape(
                **offline.text_shape(
                    t,
                    vocab_size=t.vocab_size,
                    max_position_embeddings=None,
                    initializer_range=None,
                    mrope_section=[2, 3, 3],
                )
            ),
            vision=Qwen2VLVisionShape(
                depth=t.vision_layers, embed_dim=t.vision_hidden, num_heads=max(1, t.vision_hidden // 16)
            ),
            tokenizer_vocab_size=t.vocab_size,
            max_pixels=224 * 224,
            initializer_range=t.init_std,
        )
        return ModelConfig(name="tiny_qwen2_vl", random=self.name, qwen2_vl=shape)
