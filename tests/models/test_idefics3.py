"""Idefics3 / SmolVLM: image_size as the longest edge in whole tiles, the tile facts against the
processor's own output, LoRA parts on the tiny model's real names, the answer-only label mask, the
presets' offline processors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_app, pair_row, prompt_option
from PIL import Image

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, to_object
from vlmqc.models import families, load
from vlmqc.prompts import render_answer

FAMILY = families()["idefics3"]
TILE = FAMILY.tiny_config().tiny.patch_size * 4  # the tiny tower: 4 x 4 patches a tile


def tiny(models_dir, size=None):
    return load(
        FAMILY.tiny_config(),
        ImageSizeConfig(name=str(size or "native"), size=size),
        str(models_dir),
        "cpu",
        Layout.separate,
    )


def pair(verdict="defective", size=(448, 200)):
    return pair_row(verdict, size)


def expected_tiles(h, w, longest, tile):
    """Tiles by the processor's recipe, written out: scale to the longest edge, round each side up to
    whole tiles, then the grid plus one global tile (one tile where the grid is 1 x 1)."""
    scale = longest / max(h, w)
    h, w = int(h * scale), int(w * scale)
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    return 1 if rows * cols == 1 else rows * cols + 1


@pytest.mark.parametrize("size", [(448, 200), (200, 448), (300, 300), (60, 100)])
@pytest.mark.parametrize("image_size", [None, 3 * 64])
def test_tiles_and_image_tokens_are_the_processors(models_dir, size, image_size):
    model, processor, family, _ = tiny(models_dir, image_size)
    longest = image_size or 2 * TILE
    im = Image.new("RGB", size)
    batch = family.encode(processor, ["Is it good?"], [[im]], None, "right")
    facts = family.image_facts(processor, model, [im], batch)
    w, h = size
    assert facts.tiles == [expected_tiles(h, w, longest, TILE)]
    assert batch["pixel_values"].shape[1] == facts.tiles[0]  # the processor's own tiles
    per_tile = (TILE // model.config.vision_config.patch_size) ** 2 // model.config.scale_factor**2
    assert facts.image_tokens == facts.tiles[0] * per_tile == 4 * facts.tiles[0]
    assert facts.processed_pixels == [[TILE, TILE]]


def test_image_size_sets_the_longest_edge_in_whole_tiles(models_dir):
    _, processor, _, _ = tiny(models_dir, 4 * TILE)
    ip = processor.image_processor
    assert (
        ip.size == {"longest_edge": 4 * TILE} and ip.max_image_size == {"longest_edge": TILE} and ip.do_image_splitting
    )
    _, processor, _, _ = tiny(models_dir, TILE)
    assert not processor.image_processor.do_image_splitting  # one tile: the whole image, not split
    for bad in (TILE + 16, 224):
        with pytest.raises(
            ConfigError, match=rf"image_size.size={bad}: .*{TILE}-pixel tiles.*{TILE}, {2 * TILE}, {3 * TILE}"
        ):
            tiny(models_dir, bad)
    # the tiny model is checked at the door too, before anything is built
    with pytest.raises(ConfigError, match=r"image_size.size=224"):
        FAMILY.check(FAMILY.tiny_config(), ImageSizeConfig(name="224", size=224), Layout.stacked)


def test_lora_parts_on_the_real_module_names(models_dir):
    model, _, family, _ = tiny(models_dir)
    linear = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()
    ]
    parts = {n: family.part(n) for n in linear}
    assert {n for n, p in parts.items() if p == "projector"} == {"model.connector.modality_projection.proj"}
    assert all(p == "vision" for n, p in parts.items() if n.startswith("model.vision_model."))
    assert all(p == "language" for n, p in parts.items() if n.startswith("model.text_model."))
    assert "other" not in parts.values()


def test_the_label_mask_is_the_answer_and_the_end_of_utterance(models_dir):
    _, processor, family, _ = tiny(models_dir)
    prompt = prompt_option("short")
    rows = [pair(), pair("pass", size=(300, 300))]
    batch = Collator(processor, family, prompt, train=True, layout=Layout.stacked)(rows)
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == " " + render_answer(prompt, ex) + "<end_of_utterance>\n"
        start = int((batch["labels"][i] != IGNORE).nonzero()[0])
        assert tok.decode(batch["input_ids"][i][:start]).endswith("<end_of_utterance>\nAssistant:")


@pytest.mark.parametrize(
    "preset, tiles, tokens",
    [
        # 448 x 200 scaled to a longest edge of 2048 (1024 high, whole tiles): 4 x 2 tiles + global, 64 tokens each
        ("smolvlm_256m", 9, 9 * 64),
        # to 1536 (768 high): 4 x 2 tiles + global, 81 tokens each
        ("smolvlm_2b", 9, 9 * 81),
    ],
)
def test_the_presets_offline_processor_is_the_published_one(preset, tiles, tokens):
    cfg = to_object(compose_app("train", [f"model={preset}"]).model, "model")
    assert cfg.family == "idefics3" and cfg.path.startswith("HuggingFaceTB/")
    processor, config = families()[cfg.family].offline_processor(cfg.processor)
    im = Image.new("RGB", (448, 200))
    batch = processor(text=["<image>Is it good?"], images=[[im]], return_tensors="pt")
    assert batch["pixel_values"].shape[1] == tiles
    assert int((batch["input_ids"] == config.image_token_id).sum()) == tokens
