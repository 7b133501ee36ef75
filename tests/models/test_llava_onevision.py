"""LLaVA-OneVision: image_size as the grid of pinpoints, the tile and token counts against the
processor's own output, LoRA parts, the answer-only label mask, the preset's offline processor;
and LLaVA-1.5's preset (the fixed 336 tower, 576 tokens)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_app, pair_row, prompt_option
from PIL import Image

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, to_object
from vlmqc.models import families, load
from vlmqc.models.llava_onevision import grid
from vlmqc.prompts import render_answer

FAMILY = families()["llava_onevision"]
TILE = FAMILY.tiny_config().tiny.patch_size * 4


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


def test_the_grid_is_the_published_order():
    assert grid(384, 6)[:7] == [[384, 384], [384, 768], [384, 1152], [384, 1536], [384, 1920], [384, 2304], [768, 384]]
    assert len(grid(384, 6)) == 36 and grid(384, 6)[-1] == [2304, 2304]


@pytest.mark.parametrize("size", [(448, 200), (200, 448), (300, 300), (60, 100)])
@pytest.mark.parametrize("image_size", [None, 2 * 64])
def test_tiles_and_image_tokens_are_the_processors_and_the_model_takes_them(models_dir, size, image_size):
    model, processor, family, _ = tiny(models_dir, image_size)
    im = Image.new("RGB", size)
    batch = family.encode(processor, ["Is it good?"], [[im]], None, "right")
    facts = family.image_facts(processor, model, [im], batch)
    assert batch["pixel_values"].shape[1] == facts.tiles[0]  # the base view and the chosen pinpoint's tiles
    side = (image_size or 3 * TILE) // TILE
    assert 2 <= facts.tiles[0] <= 1 + side * side
    # the processor's own count, by its formula: it depends on the aspect ratio
    expected = processor._get_num_multimodal_tokens(image_sizes=[[size[1], size[0]]]).num_image_tokens[0]
    assert facts.image_tokens == expected
    with torch.no_grad():  # and the model places exactly as many image features (a mismatch raises)
        model(**batch)


def test_several_images_are_each_one_base_view(models_dir):
    model, processor, family, _ = tiny(models_dir)
    ims = [Image.new("RGB", (448, 200)), Image.new("RGB", (100, 60))]
    batch = family.encode(processor, ["Is it good?"], [ims], None, "right")
    facts = family.image_facts(processor, model, ims, batch)
    assert facts.tiles == [1, 1] and batch["pixel_values"].shape[:2] == (2, 1)
    assert facts.image_tokens == 2 * ((TILE // 16) ** 2 + 1)  # the tile's patches and a newline, each


def test_image_size_picks_the_grid_in_the_processor_and_the_model(models_dir):
    model, processor, _, _ = tiny(models_dir, 2 * TILE)
    assert processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints == grid(TILE, 2)
    for bad in (TILE + 16, 224):
        with pytest.raises(
            ConfigError, match=rf"image_size.size={bad}: .*{TILE}-pixel tiles.*{TILE}, {2 * TILE}, {3 * TILE}"
        ):
            tiny(models_dir, bad)


def test_lora_parts_on_the_real_module_names(models_dir):
    model, _, family, _ = tiny(models_dir)
    linear = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()
    ]
    parts = {n: family.part(n) for n in linear}
    assert {n for n, p in parts.items() if p == "projector"} == {
        "model.multi_modal_projector.linear_1",
        "model.multi_modal_projector.linear_2",
    }
    assert all(p == "vision" for n, p in parts.items() if n.startswith("model.vision_tower."))
    assert all(p == "language" for n, p in parts.items() if n.startswith("model.language_model."))
    assert "other" not in parts.values()


def test_the_label_mask_is_the_answer_and_the_end_of_turn(models_dir):
    _, processor, family, _ = tiny(models_dir)
    prompt = prompt_option("short")
    rows = [pair(), pair("pass", size=(300, 300))]
    batch = Collator(processor, family, prompt, train=True, layout=Layout.stacked)(rows)
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == render_answer(prompt, ex) + "<|im_end|>\n"
        start = int((batch["labels"][i] != IGNORE).nonzero()[0])
        assert tok.decode(batch["input_ids"][i][:start]).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_the_presets_offline_processor_is_the_published_one():
    cfg = to_object(compose_app("train", ["model=llava_onevision_0_5b"]).model, "model")
    processor, config = families()[cfg.family].offline_processor(cfg.processor)
    assert (
        processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints
        and len(config.image_grid_pinpoints) == 36
    )
    square = processor(text=["<image>\nIs it good?"], images=[[Image.new("RGB", (384, 384))]], return_tensors="pt")
    # a square image: the base view (27 x 27 = 729) and one tile, unpadded, 27 newlines
    assert square["pixel_values"].shape[1] == 2
    assert int((square["input_ids"] == config.image_token_index).sum()) == 729 + 27 * 27 + 27


def test_llava_1_5_preset_is_the_336_tower_with_576_tokens(tmp_path):
    cfg = to_object(compose_app("train", ["model=llava_1_5_7b"]).model, "model")
    assert cfg.family == "llava" and cfg.path == "llava-hf/llava-1.5-7b-hf"
    processor, config = families()["llava"].offline_processor(cfg.processor)
    batch = processor(text=["<image>\nIs it good?"], images=[Image.new("RGB", (448, 200))], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape[-2:]) == (336, 336)
    assert int((batch["input_ids"] == config.image_token_index).sum()) == (336 // 14) ** 2 == 576
    # the fixed tower: another size is refused, naming 336
    from types import SimpleNamespace

    with pytest.raises(ConfigError, match=r"image_size.size=448: .*built for 336 x 336.*use image_size=native or 336"):
        families()["llava"].set_image_size(processor, SimpleNamespace(config=config), 448)
