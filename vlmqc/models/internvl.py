"""InternVL 3 (the transformers-native ``-hf`` checkpoints, ``model_type: internvl``): an InternViT
tower on square tiles (448 px, 14-pixel patches, pixel-shuffled 2 x 2: 256 image tokens a tile),
an MLP projector, a Qwen2 language model; several images per turn.

An image is cut into a grid of tiles whose aspect ratio is closest to the image's, between
``min_patches`` and ``max_patches`` tiles, plus a thumbnail of the whole image when there is more
than one tile (GotOcr2's image processor, ``crop_to_patches``). ``image_size=S`` is a tile budget:
``S x S`` pixels hold ``S*S // tile**2`` tiles, which becomes ``max_patches``; a size smaller than
one tile is refused.

Its tiny model (``model.random=internvl``) is a real ``InternVLForConditionalGeneration`` with
random weights, the offline tokenizer with InternVL's image tokens and a chat template in its
format, and the PIL image processor (built without torchvision; where torchvision is installed,
``AutoProcessor`` loads it as ``InternVLProcessor``, with the torchvision image processor and a video
processor: ``offline.save_processor``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from transformers import InternVLProcessor
from transformers.utils import is_torchvision_available

from vlmqc.config import ConfigError, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

START, END, CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", START, END, CONTEXT, "<video>"]
# InternVL3-hf's format (Qwen's turns, <IMG_CONTEXT> where an image goes, which the processor expands
# to <img> + 256 x <IMG_CONTEXT> a tile + </img>), without its default system prompt. The assistant
# header is fixed, so the prompt alone tokenizes to a prefix of prompt + answer.
TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}{% else %}{{ "
    "c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# the tiny model: 64-pixel tiles of 8-pixel patches, pixel-shuffled 2 x 2: 16 image tokens a tile
TINY_TILE, TINY_PATCH, TINY_MAX_TILES = 64, 8, 4


class _ImagesOnlyProcessor(InternVLProcessor):
    """InternVLProcessor without its video processor, which transformers builds only with torchvision;
    images and text behave exactly as in InternVLProcessor."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        super().__init__(
            image_processor, tokenizer, None, image_seq_length=image_seq_length, chat_template=chat_template, **kwargs
        )


def _tokenizer(vocab_size: int):
    tokenizer = offline.tokenizer(
        vocab_size,
        TOKENS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": START,
            "end_image_token": END,
            "context_image_token": CONTEXT,
            "video_token": "<video>",
        },
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _image_processor(tile: int, min_patches: int, max_patches: int):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    # ImageNet mean and std, as the conversion script writes InternVL3-hf's image processor
    return GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=min_patches,
        max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


class InternVL(Family):
    name = "internvl"
    model_types = ("internvl",)
    multi_image = True
    parts = {"projector": r"multi_modal_projector", "vision": r"vision_tower", "language": r"language_model"}

    def load_processor(self, path: str, trust_remote_code: bool):
        # a trial uses images and text only: without torchvision, the processor without its video half
        if not is_torchvision_available():
            return _ImagesOnlyProcessor.from_pretrained(path)
        return super().load_processor(path, trust_remote_code)

    def set_image_size(self, processor, model, size: int) -> None:
        ip = processor.image_processor
        tile = ip.size["height"]
        tiles = size * size // (tile * tile)
        if tiles < 1:
            raise ConfigError(
                f"image_size.size={size}: internvl cuts images into {tile} x {tile} tiles and image_size is a "
                f"budget of size x size pixels in whole tiles; "
                f"use a size >= {tile} (one tile; {2 * tile} holds 4 tiles and a thumbnail)"
            )
        ip.max_patches = tiles
        ip.min_patches = min(ip.min_patches, tiles)

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        # pixel_values hold every tile of every image (thumbnails included); each image's share is the
        # processor's own tiling rule, checked against what it returned
        ip = processor.image_processor
        tiles = [ip.get_number_of_image_patches(im.height, im.width, {"crop_to_patches": True}) for im in images]
        if sum(tiles) != batch["pixel_values"].shape[0]:
            raise ValueError(
                f"internvl: {sum(tiles)} tiles by the tiling rule, {batch['pixel_values'].shape[0]} in pixel_values"
            )
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[list(batch["pixel_values"].shape[-2:])] * len(images),
            tiles=tiles,
            image_tokens=int((batch["input_ids"] == model.config.image_token_id).sum()),
        )

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every resolution: the tile budget is the processor's
        spec = {
            "tiny": asdict(cfg.tiny),
            "tile": TINY_TILE,
            "patch": TINY_PATCH,
            "max_tiles": TINY_MAX_TILES,
            "template": TEMPLATE,
            "processor_files": offline.PROCESSOR_FILES,
        }
        return f"internvl-random-{offline.key(spec)}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import InternVLForConditionalGeneration

        t = cfg.tiny
        tokenizer = _tokenizer(t.vocab_size)
        tokens_per_tile = (TINY_TILE // TINY_PATCH) ** 2 // 4
        processor = _ImagesOnlyProcessor(
            image_processor=_image_processor(TINY_TILE, 1, TINY_MAX_TILES),
            tokenizer=tokenizer,
            image_seq_length=tokens_per_tile,
            chat_template=TEMPLATE,
        )
        text = offline.text_shape(t, vocab_size=len(tokenizer))  # its token ids are _config's
        vision = offline.vision_shape(t)
        config = _config(
            tokenizer, TINY_TILE, TINY_PATCH, tokens_per_tile, text=text, vision=vision, initializer_range=t.init_std
        )
        model = offline.random_model(InternVLForConditionalGeneration, config, t.seed, tokenizer)
        model.save_pretrained(path)
        offline.save_processor(processor, path, "InternVLProcessor")

    def offline_processor(self, facts: dict):
        """Facts (conf/model/internvl3_1b.yaml): ``tile_size``, ``patch_size``, ``downsample_ratio``,
        ``min_patches``, ``max_patches``, ``image_seq_length``."""
        tokenizer = _tokenizer(1024)
        ip = _image_processor(facts["tile_size"], facts["min_patches"], facts["max_patches"])
        processor = _ImagesOnlyProcessor(
            image_processor=ip, tokenizer=tokenizer, image_seq_length=facts["image_seq_length"], chat_template=TEMPLATE
        )
        config = _config(
            tokenizer, facts["tile_size"], facts["patch_size"], facts["image_seq_length"], facts["downsample_ratio"]
        )
        return processor, config


def _config(
    tokenizer,
    tile: int,
    patch: int,
    tokens_per_tile: int,
    downsample_ratio: float = 0.5,
    text=None,
    vision=None,
    **kwargs,
):
    """An InternVLConfig (Qwen2 text model) with the tower's tile and patch and the tokenizer's ids."""
    from transformers import InternVLConfig

    if (tile // patch) ** 2 * downsample_ratio**2 != tokens_per_tile:
        raise ValueError(
            f"internvl: {tile}-pixel tiles of {patch}-pixel patches, downsampled {downsample_ratio}, are not "
            f"{tokens_per_tile} tokens a tile"
        )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TOKENS}
    return InternVLConfig(
        vision_config={"image_size": [tile, tile], "patch_size": [patch, patch], **(vision or {})},
        text_config={
            "model_type": "qwen2",
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            **(text or {}),
        },
        image_token_id=ids[CONTEXT],
        image_seq_length=tokens_per_tile,
        downsample_ratio=downsample_ratio,
        **kwargs,
    )
