"""Idefics3 / SmolVLM: an image cut into square tiles of the vision tower's size plus a global view,
each tile's patches pixel-shuffled (``scale_factor``) into a fixed number of image tokens.

SmolVLM-256M-Instruct and SmolVLM-Instruct are ``model_type: idefics3`` checkpoints (their
config.json); SmolVLM2 (``model_type: smolvlm``) is another processor, with a video half, and is
not registered here.

``image_size=<n>`` is the longest edge the processor resizes an image to (``size.longest_edge``);
the image is then cut into tiles of the tower's size (``max_image_size.longest_edge``), up to
``n / tile`` a side, plus one global tile of the whole image. ``n`` must be a whole number of
tiles; ``n = tile`` is one tile, the whole image without splitting (``do_image_splitting: false``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]  # the processor names tiles up to 6 x 6
TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *ROW_COL,
]
# SmolVLM's chat format, images only: "<|im_start|>User:<image>...<end_of_utterance>\nAssistant: ...".
# The prompt alone ends with "Assistant:", a pre-token of its own, so it is a prefix of prompt + answer.
TEMPLATE = (
    "<|im_start|>"
    "{% for m in messages %}"
    "{{ m['role'] | capitalize }}{% if m['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% else %}{{ c['text'] }}{% endif "
    "%}{% endfor %}"
    "{{ '<end_of_utterance>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TILE_PATCHES = 4  # the tiny tower's tile: 4 x 4 patches, pixel-shuffled 2 x 2 into 4 image tokens


def _tokenizer(vocab_size: int):
    tokenizer = offline.tokenizer(
        vocab_size, TOKENS, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _processor(tokenizer, tile: int, longest_edge: int, splitting: bool, image_seq_len: int):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    # PIL image processor: no torchvision needed
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": tile},
        do_image_splitting=splitting,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=TEMPLATE
    )


class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3",)
    multi_image = True  # images interleave freely with text in one turn
    parts = {"projector": r"\.connector\.", "vision": r"vision_model", "language": r"text_model"}

    @staticmethod
    def _tile_error(size: int, tile: int) -> ConfigError:
        multiples = ", ".join(str(k * tile) for k in range(1, 5))
        return ConfigError(
            f"image_size.size={size}: an idefics3 (SmolVLM) model cuts images into {tile}-pixel tiles (its vision "
            f"tower's size), so the longest edge is a whole number of tiles: {multiples}, ... ({tile}: one "
            f"tile, no splitting); or image_size=native"
        )

    def check(self, cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
        super().check(cfg, image_size, layout)
        tile = cfg.tiny.patch_size * TILE_PATCHES
        if cfg.path is None and image_size.size is not None and image_size.size % tile:
            raise self._tile_error(image_size.size, tile)

    def set_image_size(self, processor, model, size: int) -> None:
        tile = model.config.vision_config.image_size  # the tower's input, which max_image_size must equal
        if size % tile:
            raise self._tile_error(size, tile)
        ip = processor.image_processor
        ip.size = {"longest_edge": size}
        ip.max_image_size = {"longest_edge": tile}
        ip.do_image_splitting = size > tile

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        # pixel_values is (batch, tiles of all images, 3, tile, tile), padded; the tile grid is the processor's own
        ip = processor.image_processor
        grids = ip(images=[images], return_row_col_info=True)
        tile = ip.max_image_size["longest_edge"]
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[[tile, tile]] * len(images),
            tiles=[
                r * c + 1 if r else 1 for r, c in zip(grids["rows"][0], grids["cols"][0], strict=True)
            ],  # + the global tile
            image_tokens=int((batch["input_ids"] == model.config.image_token_id).sum()),
        )

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every image_size: the longest edge is the processor's
        spec = {"tiny": asdict(cfg.tiny), "template": TEMPLATE, "tile_patches": TILE_PATCHES}
        return f"idefics3-tiny-{offline.key(spec)}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration

        t = cfg.tiny
        tokenizer = _tokenizer(t.vocab_size)
        tile, scale = t.patch_size * TILE_PATCHES, 2
        processor = _processor(
            tokenizer, tile, 2 * tile, True, (TILE_PATCHES // scale) ** 2
        )  # native: up to 2 x 2 tiles
        config = Idefics3Config(
            vision_config=offline.vision_shape(t, image_size=tile, patch_size=t.patch_size),
            text_config=offline.text_shape(t, tokenizer, model_type="llama"),
            scale_factor=scale,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            pad_token_id=tokenizer.pad_token_id,
        )
        model = offline.random_model(Idefics3ForConditionalGeneration, config, t.seed, tokenizer)
        model.save_pretrained(path)
        processor.save_pretrained(path)

    def offline_processor(self, facts: dict):
        """Facts: ``tile`` (max_image_size.longest_edge = the tower's image_size), ``patch_size``,
        ``scale_factor``, ``longest_edge`` (size.longest_edge), ``do_image_splitting``."""
        from transformers import Idefics3Config

        tile, patch, scale = facts["tile"], facts["patch_size"], facts["scale_factor"]
        tokenizer = _tokenizer(1024)
        image_seq_len = (tile // patch) ** 2 // scale**2
        processor = _processor(tokenizer, tile, facts["longest_edge"], facts["do_image_splitting"], image_seq_len)
        config = Idefics3Config(
            vision_config={"image_size": tile, "patch_size": patch},
            scale_factor=scale,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        )
        return processor, config
