"""The Phi-3(.5)-vision family, the study's own: remote code for real (the tiny model is a folder whose
config.json ``auto_map`` points at modeling, configuration and processing files written beside it,
loaded with ``trust_remote_code=True``), the clear error without it, Phi's numbered placeholders,
the crop budget, and the answer-only label mask in its format (vlmqc/models/phi3_v.py). The golden
smoke test (tests/models/test_families.py) trains and evaluates the same tiny remote-code model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF, compose_app, pair_row, prompt_option
from PIL import Image
from transformers import AutoModelForCausalLM
from transformers.utils import is_torchvision_available

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig, to_object
from vlmqc.data import get_dataset
from vlmqc.data.layout import images as row_images
from vlmqc.evaluation.generate import predict
from vlmqc.models import check, families, load
from vlmqc.preflight import validate
from vlmqc.preview import preview, source
from vlmqc.prompts import render_answer

PHI = families()["phi3_v"]


@pytest.fixture(scope="module")
def tiny(models_dir):
    return load(PHI.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu")


def pair(verdict="defective", size=(448, 386)):
    return pair_row(verdict, size)


def test_the_tiny_model_is_remote_code_loaded_from_its_own_files(tiny):
    model, processor, family, path = tiny
    folder = Path(path)
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["model_type"] == "phi3_v"
        and config["auto_map"]["AutoModelForCausalLM"] == "modeling_phi3_v.Phi3VForCausalLM"
    )
    assert all(
        (folder / f).is_file() for f in ("configuration_phi3_v.py", "modeling_phi3_v.py", "processing_phi3_v.py")
    )
    # the classes came from those files (transformers' dynamic modules), not from transformers itself
    assert type(model).__name__ == "Phi3VForCausalLM" and type(model).__module__.startswith("transformers_modules.")
    assert type(processor).__name__ == "Phi3VProcessor" and type(processor).__module__.startswith(
        "transformers_modules."
    )
    assert family is PHI and PHI.auto_class(True) is AutoModelForCausalLM


def test_without_trust_remote_code_loading_fails_saying_the_preset_sets_it(tiny, models_dir):
    cfg = ModelConfig(name="mine", path=tiny[3])  # trust_remote_code defaults to false
    message = (
        r"model.trust_remote_code=false: a phi3_v checkpoint .* runs its own modeling and processing "
        r"code.*model=phi3_5_vision sets it"
    )
    with pytest.raises(ConfigError, match=message):
        check(cfg, ImageSizeConfig(name="native"), Layout.stacked)  # at the door, from config.json alone
    with pytest.raises(ConfigError, match=message):
        load(cfg, ImageSizeConfig(name="native"), str(models_dir), "cpu")  # and at load, before transformers is asked


def test_the_text_numbers_every_image_in_phis_format(tiny):
    processor = tiny[1]
    assert (
        PHI.text(processor, "Compare.", 2, None)
        == "<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n"
    )
    assert PHI.text(processor, "Q?", 1, "A") == "<|user|>\n<|image_1|>\nQ?<|end|>\n<|assistant|>\nA<|end|>\n"


def test_the_label_mask_learns_the_answer_and_the_end_of_the_turn(tiny):
    model, processor, family, _ = tiny
    prompt = prompt_option("short")
    rows = [pair(), pair("pass")]
    batch = Collator(processor, family, prompt, train=True)(rows)
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == render_answer(prompt, ex) + "<|end|>\n"
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_a_batch_is_encoded_example_by_example_and_padded_on_the_asked_side(tiny):
    model, processor, family, _ = tiny
    images = [
        [Image.new("RGB", (448, 386)), Image.new("RGB", (448, 386))],
        [Image.new("RGB", (448, 386)), Image.new("RGB", (448, 386))],
    ]
    left = family.encode(processor, ["Compare.", "Compare the two products carefully."], images, None, "left")
    right = family.encode(processor, ["Compare.", "Compare the two products carefully."], images, None, "right")
    assert left["pixel_values"].shape[0] == 4  # every image of every example, in order
    assert left["attention_mask"][0, 0] == 0 and right["attention_mask"][0, -1] == 0
    assert torch.equal(left["input_ids"][1], right["input_ids"][1])  # the longest is not padded
    facts = family.image_facts(
        processor, model, images[0], family.encode(processor, ["Compare."], images[:1], None, "left")
    )
    tokens_per_image = (224 // 16) ** 2  # the tiny CLIP tower: 224 pixels, 16-pixel patches, no merging
    assert facts.tiles == [1, 1] and facts.image_tokens == 2 * tokens_per_image


def test_predict_answers_every_row(tiny):
    model, processor, family, _ = tiny
    rows = [pair(), pair("pass"), pair(size=(300, 300))]
    out = predict(model, processor, family, prompt_option("short"), rows, batch_size=2, max_new_tokens=4)
    assert [p["id"] for p in out] == [r["id"] for r in rows]


def test_image_size_sets_num_crops_a_budget_of_whole_336_crops(tiny):
    published = SimpleNamespace(image_processor=SimpleNamespace(num_crops=4))  # the published processor's knob
    PHI.set_image_size(published, None, 672)
    assert published.image_processor.num_crops == 4
    PHI.set_image_size(published, None, 1008)
    assert published.image_processor.num_crops == 9
    with pytest.raises(
        ConfigError, match=r"image_size.size=300: phi3_v cuts images into 336 x 336 crops.*use a size >= 336"
    ):
        PHI.set_image_size(published, None, 300)
    # the tiny model's CLIP image processor, as AutoProcessor picks its backend: torchvision where installed, else PIL
    clip = "CLIPImageProcessor" if is_torchvision_available() else "CLIPImageProcessorPil"
    with pytest.raises(ConfigError, match=rf"image_size.size=448: this phi3_v processor \({clip}\) has no num_crops"):
        PHI.set_image_size(tiny[1], tiny[0], 448)


def test_the_published_layout_counts_real_crops_and_negative_image_ids():
    # the published processor: (images, crops + global view, 3, 336, 336) padded to the most crops,
    # image_sizes the HD size, image tokens -1, -2, ... for <|image_1|>, <|image_2|>
    batch = {
        "pixel_values": torch.zeros(2, 5, 3, 336, 336),
        "image_sizes": torch.tensor([[672, 672], [336, 672]]),
        "input_ids": torch.tensor([[1, -1, -1, -1, 5, -2, -2, 7]]),
    }
    facts = PHI.image_facts(None, None, [Image.new("RGB", (672, 672)), Image.new("RGB", (672, 336))], batch)
    assert facts.tiles == [5, 3] and facts.image_tokens == 5 and facts.processed_pixels == [[336, 336]] * 2


def test_the_linear_layers_fall_in_their_parts(tiny):
    linear = [n for n, m in tiny[0].named_modules() if isinstance(m, torch.nn.Linear)]
    assert {PHI.part(n) for n in linear} == {"vision", "projector", "language", "other"}
    assert [n for n in linear if PHI.part(n) == "other"] == ["lm_head"]
    # the published modeling_phi3_v.py's names
    assert PHI.part("model.vision_embed_tokens.img_projection.0") == "projector"
    assert (
        PHI.part("model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj") == "vision"
    )
    assert (
        PHI.part("model.layers.0.self_attn.qkv_proj") == "language"
        and PHI.part("model.layers.3.mlp.gate_up_proj") == "language"
    )


def test_the_preset_alone_trusts_remote_code():
    cfg = to_object(compose_app("train", ["model=phi3_5_vision"]).model, "model")
    assert cfg.path == "microsoft/Phi-3.5-vision-instruct" and cfg.family == "phi3_v" and cfg.trust_remote_code
    assert cfg.processor == {"crop_size": 336, "num_crops": 4, "num_img_tokens": 144}
    remote = {
        p.stem
        for p in (CONF / "model").glob("*.yaml")
        if to_object(compose_app("train", [f"model={p.stem}"]).model, "model").trust_remote_code
    }
    assert remote == {"phi3_5_vision"}  # phi4_multimodal is transformers' native port


@pytest.mark.parametrize(
    "size, wh, hd, tiles, tokens",
    [
        # worked by hand from the published processing_phi3_v.py: landscape 448 x 386 (ratio 1.16), 4 crops:
        # scale 2 (2 * ceil(2 / 1.16) = 4), 672 x 579 padded to 672 x 672, 2 x 2 crops + the global view;
        # (4 + 1) * 144 + 1 + (2 + 1) * 12 image tokens
        (672, (448, 386), [672, 672], 5, 757),
        # portrait 300 x 1000, turned: ratio 3.33, scale 3 (3 * ceil(0.9) = 3 <= 4; 4 * ceil(1.2) = 8 > 4),
        # 1008 x 302 padded to 1008 x 336, turned back: 3 crops down, 1 across
        (672, (300, 1000), [1008, 336], 4, (3 + 1) * 144 + 1 + (3 + 1) * 12),
        # 16 crops (image_size=1344): scale 4, 1344 x 1158 padded to 1344 x 1344, 4 x 4 crops
        (1344, (448, 386), [1344, 1344], 17, 17 * 144 + 1 + 5 * 12),
        # native: the published num_crops 4
        (None, (448, 386), [672, 672], 5, 757),
    ],
)
def test_the_presets_offline_processor_follows_the_published_hd_rules(size, wh, hd, tiles, tokens):
    cfg = to_object(compose_app("train", ["model=phi3_5_vision"]).model, "model")
    family, processor, config, origin = source(cfg, ImageSizeConfig(name=str(size or "native"), size=size), "unused")
    assert family is PHI and "built offline" in origin
    image = Image.new("RGB", wh)
    batch = PHI.encode(processor, ["Is it defective?"], [[image]], ["The bottom product passed."], "right")
    facts = PHI.image_facts(processor, SimpleNamespace(config=config), [image], batch)
    assert batch["image_sizes"].tolist() == [hd] and facts.tiles == [tiles] and facts.image_tokens == tokens
    assert batch["pixel_values"].shape == (
        1,
        (size or 672) ** 2 // 336**2 + 1,
        3,
        336,
        336,
    )  # padded to num_crops + 1 views
    assert facts.processed_pixels == [[336, 336]]


def test_the_offline_processor_refuses_facts_that_are_not_the_published_crops():
    with pytest.raises(ConfigError, match="336-pixel crops of 144 tokens, not 448 and 144"):
        PHI.offline_processor({"crop_size": 448, "num_crops": 4, "num_img_tokens": 144})


def test_inspects_table_agrees_with_the_real_processor_on_the_tiny_model(models_dir, tmp_path):
    cfg = compose_app("preview", ["data=pair_round", "data.train_size=8", "data.test_size=4", "image_size=native"])
    cfg.paths.output_dir = "."
    objs = validate(cfg)  # with the default tiny LLaVA, which takes one image: the layout and model are set after
    objs["model"], objs["data"] = PHI.tiny_config(), dataclasses.replace(objs["data"], layout=Layout.separate)
    dsd, _ = get_dataset(objs["data"], tmp_path, num_workers=1, progress=False)
    rows = list(dsd["test"])[:2]
    table, _ = preview(objs, str(models_dir), rows)
    _, processor, _, _ = load(PHI.tiny_config(), objs["image_size"], str(models_dir), "cpu", Layout.separate)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for row, shown in zip(rows, table, strict=True):
        images = row_images(row, Layout.separate)
        # the remote-code processor itself, on the example's text and images
        out = processor(text=PHI.text(processor, "Q", len(images), "A"), images=images, return_tensors="pt")
        assert shown.facts.input_pixels == [[im.height, im.width] for im in images]
        assert shown.facts.image_tokens == int((out["input_ids"] == image_id).sum()) == 2 * (224 // 16) ** 2
        assert (
            shown.facts.tiles == [1, 1] and shown.facts.processed_pixels == [list(out["pixel_values"].shape[-2:])] * 2
        )
        assert (
            shown.sequence
            == Collator(processor, PHI, objs["prompt"], True, Layout.separate)([row])["input_ids"].shape[1]
        )
