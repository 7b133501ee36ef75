"""The InternVL family: the tile budget, tiles and image tokens against the processor's output, LoRA
parts on the tiny model's module names, the answer-only label mask in its format, and the
published checkpoint's processor built offline (vlmqc/models/internvl.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import compose_app, pair_row, prompt_option
from PIL import Image

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, to_object
from vlmqc.models import families, load
from vlmqc.prompts import render_answer

INTERNVL = families()["internvl"]
TOKENS_PER_TILE = (64 // 8) ** 2 // 4  # the tiny tower: 64-pixel tiles, 8-pixel patches, 2 x 2 pixel shuffle


@pytest.fixture(scope="module")
def tiny(models_dir):
    return load(INTERNVL.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu")


def pair(verdict="defective", size=(448, 386)):
    return pair_row(verdict, size)


@pytest.mark.parametrize("size, tiles", [(64, 1), (96, 2), (128, 4), (200, 9)])
def test_image_size_is_a_budget_of_whole_tiles(models_dir, size, tiles):
    _, processor, _, _ = load(
        INTERNVL.tiny_config(), ImageSizeConfig(name=str(size), size=size), str(models_dir), "cpu"
    )
    assert processor.image_processor.max_patches == tiles and processor.image_processor.min_patches == 1


def test_an_image_size_under_one_tile_is_refused_naming_the_tile(models_dir):
    with pytest.raises(
        ConfigError, match=r"image_size.size=32: internvl cuts images into 64 x 64 tiles.*use a size >= 64"
    ):
        load(INTERNVL.tiny_config(), ImageSizeConfig(name="32", size=32), str(models_dir), "cpu")


@pytest.mark.parametrize(
    "size, tiles",
    [
        ((64, 64), 1),  # one tile, no thumbnail
        ((128, 640), 5),  # 5:1 wide: a 4 x 1 grid (the native budget, 4) and the thumbnail
        ((386, 448), 5),  # about square: 2 x 2 and the thumbnail
    ],
)
def test_tiles_and_image_tokens_are_the_processors_own(tiny, size, tiles):
    model, processor, family, _ = tiny
    image = Image.new("RGB", size[::-1])
    batch = family.encode(processor, ["Does it pass?"], [[image]], None, "left")
    facts = family.image_facts(processor, model, [image], batch)
    assert facts.tiles == [tiles] and batch["pixel_values"].shape[0] == tiles
    assert facts.processed_pixels == [[64, 64]] and facts.input_pixels == [list(size)]
    assert facts.image_tokens == tiles * TOKENS_PER_TILE
    assert model.config.image_seq_length == TOKENS_PER_TILE


def test_two_images_are_tiled_each_in_their_order(tiny):
    model, processor, family, _ = tiny
    images = [Image.new("RGB", (640, 128)), Image.new("RGB", (64, 64))]
    batch = family.encode(processor, ["Compare."], [images], None, "left")
    facts = family.image_facts(processor, model, images, batch)
    assert facts.tiles == [5, 1] and facts.image_tokens == 6 * TOKENS_PER_TILE
    tok = processor.tokenizer
    ids = batch["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<img>")) == ids.count(tok.convert_tokens_to_ids("</img>")) == 2


def test_every_linear_layer_of_the_tiny_model_falls_in_its_part(tiny):
    model = tiny[0]
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    expected = {
        "vision_tower": "vision",
        "multi_modal_projector": "projector",
        "language_model": "language",
        "lm_head": "other",
    }
    for name in linear:
        assert INTERNVL.part(name) == next(part for key, part in expected.items() if key in name), name
    assert {INTERNVL.part(n) for n in linear} == {"vision", "projector", "language", "other"}


def test_the_label_mask_learns_the_answer_and_the_end_of_the_turn(tiny):
    _, processor, family, _ = tiny
    prompt = prompt_option("short")
    rows = [pair(), pair("pass", size=(300, 448))]
    batch = Collator(processor, family, prompt, train=True)(rows)
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == render_answer(prompt, ex) + "<|im_end|>\n"
    text = family.text(processor, "Q?", 2, "A")
    assert text == "<|im_start|>user\n<IMG_CONTEXT>\n<IMG_CONTEXT>\nQ?<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"


def test_the_separate_layout_is_accepted():
    INTERNVL.check(INTERNVL.tiny_config(), ImageSizeConfig(name="native"), Layout.separate)


def test_the_preset_names_the_hf_checkpoint_and_its_processor_builds_offline():
    cfg = to_object(compose_app("train", ["model=internvl3_1b"]).model, "model")
    assert cfg.path == "OpenGVLab/InternVL3-1B-hf" and cfg.family == "internvl" and not cfg.trust_remote_code
    processor, config = INTERNVL.offline_processor(cfg.processor)
    weightless = SimpleNamespace(config=config)  # what image_facts reads of a model: its config
    assert config.model_type == "internvl" and config.image_seq_length == 256
    # a 3:2 image in the published budget (12 tiles): a 3 x 2 grid of 448 tiles and the thumbnail
    image = Image.new("RGB", (1344, 896))
    batch = INTERNVL.encode(processor, ["Q?"], [[image]], None, "left")
    facts = INTERNVL.image_facts(processor, weightless, [image], batch)
    assert facts.tiles == [7] and facts.processed_pixels == [[448, 448]] and facts.image_tokens == 7 * 256
    INTERNVL.set_image_size(processor, weightless, 896)  # the tile budget on the published tiles: 4
    wide = Image.new("RGB", (896, 448))
    batch = INTERNVL.encode(processor, ["Q?"], [[wide]], None, "left")
    assert INTERNVL.image_facts(processor, weightless, [wide], batch).tiles == [3]  # 2 x 1 and the thumbnail
    with pytest.raises(ConfigError, match=r"use a size >= 448"):
        INTERNVL.set_image_size(processor, weightless, 336)
