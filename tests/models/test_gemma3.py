"""Gemma 3: the chat format's label mask, image_size as pan-and-scan, crops and image tokens
against the image processor's own output, LoRA parts, the offline processor."""

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

G3 = families()["gemma3"]


@pytest.fixture
def tiny(tmp_path_factory):
    """A fresh load each test: set_image_size changes the processor."""
    return load(G3.tiny_config(), ImageSizeConfig(name="native"), str(tmp_path_factory.getbasetemp() / "models"), "cpu")


def pair(verdict="defective", size=(448, 386)):
    return pair_row(verdict, size)


def test_the_label_mask_is_the_answer_and_the_end_of_the_model_turn(tiny):
    model, processor, family, _ = tiny
    prompt = prompt_option("short")
    rows = [pair(), pair("pass", size=(300, 300))]
    batch = Collator(processor, family, prompt, train=True)(rows)
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == render_answer(prompt, ex) + "<end_of_turn>\n"
        real = batch["attention_mask"][i].bool()
        text = tok.decode(batch["input_ids"][i][real][: len(batch["input_ids"][i][real]) - len(learnt)])
        assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert "token_type_ids" in batch  # image tokens attend both ways in training
    assert int((batch["input_ids"][0] == model.config.image_token_id).sum()) == model.config.mm_tokens_per_image == 49


def test_image_size_is_the_tower_or_a_multiple_of_it_for_pan_and_scan(tiny):
    model, processor, family, _ = tiny
    ip = processor.image_processor
    family.set_image_size(processor, model, 224)
    assert ip.do_pan_and_scan is False
    family.set_image_size(processor, model, 672)
    assert ip.do_pan_and_scan is True and ip.pan_and_scan_max_num_crops == 3
    for size in (336, 896 + 1, 112):
        with pytest.raises(
            ConfigError,
            match=rf"image_size.size={size}: gemma3 .* fixed 224 x 224 pixels; use image_size=native .*, 224 .* "
            rf"448, 672",
        ):
            family.set_image_size(processor, model, size)


@pytest.mark.parametrize("size, crops", [(224, 0), (448, 2), (672, 3)])
def test_crops_and_image_tokens_are_the_processors(tiny, size, crops):
    model, processor, family, _ = tiny
    family.set_image_size(processor, model, size)
    wide, square = Image.new("RGB", (1500, 500)), Image.new("RGB", (400, 400))  # 3:1 (cut), 1:1 (never cut)
    batch = family.encode(processor, ["Compare them."], [[wide, square]], None, "right")
    facts = family.image_facts(processor, model, [wide, square], batch)
    # the formula: ceil(3:1 ratio) crops, capped by image_size's k; the square is one view
    assert facts.tiles == [1 + crops, 1]
    assert batch["pixel_values"].shape[0] == sum(facts.tiles)
    assert facts.image_tokens == 49 * sum(facts.tiles)
    assert facts.processed_pixels == [[224, 224], [224, 224]] and facts.input_pixels == [[500, 1500], [400, 400]]
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<start_of_image>")).sum()) == sum(
        facts.tiles
    )


def test_the_processors_own_default_would_ignore_pan_and_scan(tiny):
    """Why encode passes the settings: Gemma3Processor's call defaults override the image processor."""
    model, processor, family, _ = tiny
    family.set_image_size(processor, model, 448)
    wide = Image.new("RGB", (1500, 500))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], add_generation_prompt=True
    )
    assert processor(text=[text], images=[[wide]], return_tensors="pt")["pixel_values"].shape[0] == 1
    assert family.encode(processor, ["x"], [[wide]], None, "right")["pixel_values"].shape[0] == 3


def test_every_linear_layer_falls_in_its_part(tiny):
    model, _, family, _ = tiny
    parts = {
        n: family.part(n)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()
    }
    assert {p for n, p in parts.items() if n.startswith("model.vision_tower.")} == {"vision"}
    assert {p for n, p in parts.items() if n.startswith("model.language_model.")} == {"language"}
    assert set(parts.values()) == {"vision", "language"}  # the projector is a weight matrix, no linear layer
    assert family.part("model.multi_modal_projector.mm_input_projection_weight") == "projector"


def test_the_tiny_text_model_has_sliding_and_full_layers(tiny):
    text = tiny[0].config.text_config
    assert text.model_type == "gemma3_text" and tiny[0].config.model_type == "gemma3"
    assert set(text.layer_types) == {"sliding_attention", "full_attention"} and text.sliding_window == 64


def test_several_images_are_taken():
    G3.check(G3.tiny_config(), ImageSizeConfig(name="native"), Layout.separate)


def test_the_offline_processor_sees_what_the_published_4b_sees():
    cfg = to_object(compose_app("train", ["model=gemma3_4b"]).model, "model")
    assert cfg.family == "gemma3" and cfg.path == "google/gemma-3-4b-it"
    processor, config = G3.offline_processor(cfg.processor)
    model = type("M", (), {"config": config})()
    assert config.model_type == "gemma3" and config.vision_config.image_size == 896
    wide = Image.new("RGB", (2000, 600))
    batch = G3.encode(processor, ["Is it defective?"], [[wide]], None, "right")
    facts = G3.image_facts(processor, model, [wide], batch)
    assert (
        facts.tiles == [1] and facts.processed_pixels == [[896, 896]] and facts.image_tokens == 256
    )  # native: pan-and-scan off
    assert (896 // 14) ** 2 // 16 == 256  # 64 x 64 patches pooled 4 x 4
    G3.set_image_size(processor, model, 1792)
    batch = G3.encode(processor, ["Is it defective?"], [[wide]], None, "right")
    facts = G3.image_facts(processor, model, [wide], batch)
    assert facts.tiles == [1 + min(2, math.floor(2000 / 600 + 0.5))] and facts.image_tokens == 256 * 3
