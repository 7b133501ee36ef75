"""Qwen2.5-VL and Qwen3-VL (their tiny models), and what the published Qwen checkpoints see,
built offline from their presets' processor facts (``Family.offline_processor``).

The token counts are checked against the processor's documented formula, written out here: the
image is resized to multiples of patch x merge pixels, rounded, scaled down into max_pixels (floor)
or up to min_pixels (ceil), then one token per merge x merge patches.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_app, prompt_option
from PIL import Image

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, to_object
from vlmqc.models import families, load
from vlmqc.prompts import render_answer

NEW = ["qwen2_5_vl", "qwen3_vl"]


def expected_tokens(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int, int]:
    """(resized height, width, image tokens) by Qwen-VL's smart resize, one token per factor x factor pixels."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w, (h // factor) * (w // factor)


def preset(name: str):
    return to_object(compose_app("train", [f"model={name}"]).model, "model")


def offline(name: str):
    cfg = preset(name)
    family = families()[cfg.family]
    processor, config = family.offline_processor(cfg.processor)
    return family, processor, SimpleNamespace(config=config)  # a model stand-in: its config, no weights


def tokens_of(family, processor, model, images):
    batch = family.encode(processor, ["Is the bottom product defective?"], [images], None, "left")
    return family.image_facts(processor, model, images, batch)


@pytest.fixture(scope="module", params=NEW)
def tiny(request, models_dir):
    family = families()[request.param]
    return load(family.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu")


def test_the_qwen_families_are_registered_by_their_model_types():
    assert families()["qwen2_5_vl"].model_types == ("qwen2_5_vl",) and families()["qwen3_vl"].model_types == (
        "qwen3_vl",
    )
    assert all(families()[n].multi_image for n in ["qwen2_vl", *NEW])


# ---------------------------------------------------------------------------- what the published checkpoints see


@pytest.mark.parametrize(
    "size, budget, expected",
    [
        ((448, 386), None, (448, 392, 224)),  # within the published budget: rounded to multiples of 28
        ((1000, 700), 448, (532, 364, 247)),  # image_size=448: scaled down into 448 x 448 pixels
        ((40, 30), None, (84, 56, 6)),  # below min_pixels (56 x 56): scaled up
    ],
)
def test_qwen2_vl_image_tokens_are_the_processors_formula(size, budget, expected):
    family, processor, model = offline("qwen2_vl_2b")
    if budget:
        family.set_image_size(processor, model, budget)
    image = Image.new("RGB", (size[1], size[0]))
    max_pixels = budget * budget if budget else 12845056
    assert expected_tokens(*size, 28, 3136, max_pixels) == expected  # the formula, by hand above
    facts = tokens_of(family, processor, model, [image])
    assert facts.processed_pixels == [list(expected[:2])] and facts.image_tokens == expected[2] == (
        expected[0] // 28
    ) * (expected[1] // 28)


@pytest.mark.parametrize(
    "name, factor, min_pixels, max_pixels",
    [("qwen2_vl_2b", 28, 3136, 12845056), ("qwen2_5_vl_3b", 28, 3136, 12845056), ("qwen3_vl_2b", 32, 65536, 16777216)],
)
@pytest.mark.parametrize("size", [(448, 386), (2000, 3000), (90, 1200)])
def test_every_qwen_preset_sees_its_published_budget_offline(name, factor, min_pixels, max_pixels, size):
    family, processor, model = offline(name)
    assert family.name == preset(name).family and type(model.config).model_type in family.model_types
    images = [Image.new("RGB", (size[1], size[0])), Image.new("RGB", (size[0], size[1]))]  # two images in one turn
    facts = tokens_of(family, processor, model, images)
    want = [
        expected_tokens(*size, factor, min_pixels, max_pixels),
        expected_tokens(*size[::-1], factor, min_pixels, max_pixels),
    ]
    assert facts.processed_pixels == [[h, w] for h, w, _ in want]
    assert facts.image_tokens == sum(n for _, _, n in want)


def test_the_published_floor_bounds_image_size_and_the_error_says_what_it_can_do():
    family, processor, model = offline("qwen3_vl_2b")
    with pytest.raises(
        ConfigError, match=r"image_size.size=224: this qwen3_vl processor .* 65536 pixels .* use a size >= 256"
    ):
        family.set_image_size(processor, model, 224)
    family.set_image_size(processor, model, 256)
    assert processor.image_processor.size["longest_edge"] == 256 * 256
    family, processor, model = offline("qwen2_5_vl_3b")
    with pytest.raises(ConfigError, match=r"image_size.size=48: .* use a size >= 56"):
        family.set_image_size(processor, model, 48)


def test_an_unknown_processor_fact_is_refused_naming_what_the_family_reads():
    with pytest.raises(
        ConfigError, match=r"model.processor: tile_size unknown to the qwen3_vl family; it reads .*max_pixels"
    ):
        families()["qwen3_vl"].offline_processor({"tile_size": 384})


# ---------------------------------------------------------------------------- the tiny models


def test_the_tiny_models_are_the_real_architectures_with_their_towers_features(tiny):
    model, processor, family, _ = tiny
    v = model.config.vision_config
    assert model.config.model_type == family.name
    if family.name == "qwen2_5_vl":
        assert (
            type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
            and processor.image_processor.patch_size == v.patch_size == 14
        )
        assert (
            v.fullatt_block_indexes == [1] and v.window_size == 112
        )  # block 0 attends in windows, block 1 to the whole image
    else:
        assert (
            type(model).__name__ == "Qwen3VLForConditionalGeneration"
            and processor.image_processor.patch_size == v.patch_size == 16
        )
        assert v.deepstack_visual_indexes == [0] and len(model.model.visual.deepstack_merger_list) == 1
    assert processor.image_processor.merge_size == v.spatial_merge_size == 2
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6


def test_image_size_sets_the_tiny_models_budget_and_refuses_below_its_floor(tiny, models_dir):
    _, _, family, _ = tiny
    _, processor, _, _ = load(family.tiny_config(), ImageSizeConfig(name="112", size=112), str(models_dir), "cpu")
    assert processor.image_processor.size["longest_edge"] == 112 * 112
    factor = 28 if family.name == "qwen2_5_vl" else 32
    image = Image.new("RGB", (386, 448))
    grid = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")[
        "image_grid_thw"
    ][0]
    h, w, _ = expected_tokens(448, 386, factor, family.tiny_min_pixels, 112 * 112)
    assert grid.tolist() == [1, h // factor * 2, w // factor * 2]
    low = math.isqrt(family.tiny_min_pixels) - 8
    with pytest.raises(
        ConfigError,
        match=rf"image_size.size={low}: the {family.name} processor scales every image up to its min_pixels",
    ):
        load(family.tiny_config(), ImageSizeConfig(name=str(low), size=low), str(models_dir), "cpu")


def test_every_linear_layer_falls_in_its_part(tiny):
    model, _, family, _ = tiny
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    by_part = {
        part: sorted(n for n in linear if family.part(n) == part)
        for part in ("projector", "vision", "language", "other")
    }
    merger = {"qwen2_5_vl": ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"]}.get(
        family.name,
        [
            "model.visual.deepstack_merger_list.0.linear_fc1",
            "model.visual.deepstack_merger_list.0.linear_fc2",
            "model.visual.merger.linear_fc1",
            "model.visual.merger.linear_fc2",
        ],
    )
    assert by_part["projector"] == merger
    assert by_part["vision"] and all(n.startswith("model.visual.blocks.") for n in by_part["vision"])
    assert len(by_part["language"]) == 2 * 7 and all(
        n.startswith("model.language_model.layers.") for n in by_part["language"]
    )
    assert by_part["other"] == ["lm_head"]


@pytest.mark.parametrize("layout", [Layout.stacked, Layout.separate])
def test_golden_label_mask_in_the_familys_chat_format(tiny, layout):
    _, processor, family, _ = tiny
    prompt = prompt_option("short")
    row = {
        "id": "golden",
        "task": "pair",
        "image": Image.new("RGB", (224, 448), (120, 130, 140)),
        "verdict": "defective",
        "defects": [{"position": "C5", "type": "missing"}],
        "target": "",
        "answer": "",
        "meta": json.dumps({"stack": {"top": 216, "gap": 16}}),  # two 224 x 216 products, a 16-pixel gap
    }
    batch = Collator(processor, family, prompt, train=True, layout=layout)([row])
    tok = processor.tokenizer
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    start = int((labels != IGNORE).nonzero()[0])
    assert (
        tok.decode(labels[start:].tolist()) == render_answer(prompt, row) + "<|im_end|>\n"
    )  # the answer and the end of its turn
    head = tok.decode(ids[:start].tolist())
    turn = "<|im_start|>user\n<|vision_start|>"
    assert head.startswith(
        ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if family.name == "qwen2_5_vl" else "") + turn
    )
    assert head.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert head.count("<|vision_start|>") == (2 if layout is Layout.separate else 1)
