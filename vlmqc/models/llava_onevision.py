"""LLaVA-OneVision: a SigLIP tower of one tile size, anyres tiling over a grid of pinpoints, a Qwen2
language model.

One image per prompt: a base view (the whole image in one tile) plus the tiles of the pinpoint
that best fits its aspect ratio, unpadded, a newline token per row, and scaled down past 9 tiles'
worth of tokens (``anyres_max_9``): the image token count depends on the aspect ratio. Several
images per prompt: each image only as its base view padded to a square, as the published model
was trained for multi-image.

``image_size=<n>`` picks the grid: pinpoints of up to ``n / tile`` tiles a side (``n`` a whole
number of tiles; the tile itself is the tower's, fixed). The published grid is 6 x 6 tiles of 384
(2304 pixels a side); ``image_size=384`` is the base view and one tile.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from transformers import LlavaOnevisionProcessor

from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

# Qwen2's chat format, as LLaVA-OneVision's chat template writes it (images first in the user turn)
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TILE_PATCHES = 4  # the tiny tower's tile: 4 x 4 patches, 16 image tokens a tile
TINY_GRID = 3  # the tiny model's native grid: up to 3 x 3 tiles


def grid(tile: int, side: int) -> list[list[int]]:
    """Pinpoints of 1 to ``side`` tiles a side, in the published checkpoints' order."""
    return [[tile * h, tile * w] for h in range(1, side + 1) for w in range(1, side + 1)]


class _ImagesOnlyProcessor(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor without its video processor, which transformers builds only with
    torchvision; images and text behave exactly as in LlavaOnevisionProcessor. Its attributes are
    read from this signature, so it names the processor's own."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


def _tokenizer(vocab_size: int):
    tokenizer = offline.tokenizer(
        vocab_size,
        TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _processor(tokenizer, tile: int, patch: int, pinpoints: list[list[int]]):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    # PIL image processor: no torchvision needed
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return _ImagesOnlyProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=TEMPLATE,
        num_image_tokens=(tile // patch) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )


class LlavaOnevision(Family):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    multi_image = True
    parts = {"projector": r"multi_modal_projector", "vision": r"vision_tower", "language": r"language_model"}

    @staticmethod
    def _grid_error(size: int, tile: int) -> ConfigError:
        multiples = ", ".join(str(k * tile) for k in range(1, 5))
        return ConfigError(
            f"image_size.size={size}: a llava_onevision model sees {tile}-pixel tiles (its vision tower's size, "
            f"fixed) on a grid of pinpoints; image_size picks the grid, a whole number of tiles a side: "
            f"{multiples}, ...; or image_size=native"
        )

    def check(self, cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
        super().check(cfg, image_size, layout)
        tile = cfg.tiny.patch_size * TILE_PATCHES
        if cfg.path is None and image_size.size is not None and image_size.size % tile:
            raise self._grid_error(image_size.size, tile)

    def load_processor(self, path: str, trust_remote_code: bool):
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available():
            return _ImagesOnlyProcessor.from_pretrained(path)
        return super().load_processor(path, trust_remote_code)

    def set_image_size(self, processor, model, size: int) -> None:
        tile = model.config.vision_config.image_size
        if size % tile:
            raise self._grid_error(size, tile)
        # the processor picks the tiles, the model unpads them by the same grid: both must change
        pinpoints = grid(tile, size // tile)
        processor.image_processor.image_grid_pinpoints = pinpoints
        model.config.image_grid_pinpoints = pinpoints

    def encode(self, processor, instructions, images, answers, side) -> dict:
        # images grouped by prompt: the processor then knows which prompts hold several images
        answers_ = answers if answers is not None else [None] * len(instructions)
        texts = [
            self.text(processor, ins, len(imgs), ans)
            for ins, imgs, ans in zip(instructions, images, answers_, strict=True)
        ]
        return dict(
            processor(
                text=texts, images=[list(imgs) for imgs in images], return_tensors="pt", padding=True, padding_side=side
            )
        )

    def image_token_id(self, processor, model) -> int | None:
        return model.config.image_token_index

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        tile = model.config.vision_config.image_size
        if len(images) == 1:  # the base view and the best pinpoint's tiles
            tiles = [
                image_size_to_num_patches(
                    [images[0].height, images[0].width], processor.image_processor.image_grid_pinpoints, tile
                )
            ]
        else:  # each image as its base view alone
            tiles = [1] * len(images)
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[[tile, tile]] * len(images),
            tiles=tiles,
            image_tokens=int((batch["input_ids"] == model.config.image_token_index).sum()),
        )

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every image_size: the grid is set at load, in the processor and the config
        spec = {
            "tiny": asdict(cfg.tiny),
            "template": TEMPLATE,
            "tile_patches": TILE_PATCHES,
            "grid": TINY_GRID,
            "processor_files": offline.PROCESSOR_FILES,
        }
        return f"llava_onevision-tiny-{offline.key(spec)}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

        t = cfg.tiny
        tokenizer = _tokenizer(t.vocab_size)
        tile = t.patch_size * TILE_PATCHES
        pinpoints = grid(tile, TINY_GRID)
        processor = _processor(tokenizer, tile, t.patch_size, pinpoints)
        config = LlavaOnevisionConfig(
            vision_config=offline.vision_shape(
                t, model_type="siglip_vision_model", image_size=tile, patch_size=t.patch_size, vision_use_head=False
            ),
            text_config=offline.text_shape(t, tokenizer, model_type="qwen2", bos_token_id=None),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
        )
        model = offline.random_model(LlavaOnevisionForConditionalGeneration, config, t.seed, tokenizer)
        model.save_pretrained(path)
        offline.save_processor(processor, path, "LlavaOnevisionProcessor")

    def offline_processor(self, facts: dict):
        """Facts: ``tile`` (the tower's image_size), ``patch_size``, ``grid`` (tiles a side of the
        pinpoint grid), ``vision_aspect_ratio``."""
        from transformers import LlavaOnevisionConfig

        tile, patch = facts["tile"], facts["patch_size"]
        tokenizer = _tokenizer(1024)
        processor = _processor(tokenizer, tile, patch, grid(tile, facts["grid"]))
        processor.vision_aspect_ratio = facts["vision_aspect_ratio"]
        config = LlavaOnevisionConfig(
            vision_config={"model_type": "siglip_vision_model", "image_size": tile, "patch_size": patch},
            image_grid_pinpoints=grid(tile, facts["grid"]),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_aspect_ratio=facts["vision_aspect_ratio"],
        )
        return processor, config
