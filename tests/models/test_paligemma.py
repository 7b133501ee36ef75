"""PaliGemma: the prefix/suffix format, the fixed tower size, LoRA parts, the offline processor."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_app, pair_row, prompt_option
from PIL import Image

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, to_object
from vlmqc.models import families, load
from vlmqc.prompts import render_answer

PG = families()["paligemma"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(PG.tiny_config(), ImageSizeConfig(name="native"), str(tmp_path_factory.mktemp("models")), "cpu")


def pair(verdict="defective", size=(448, 386)):
    return pair_row(verdict, size)


def test_the_collators_mask_is_the_processors_own_labels_and_token_types_reach_the_model(tiny):
    model, processor, family, _ = tiny
    prompt = prompt_option("short")
    rows = [pair(), pair("pass", size=(300, 300))]
    batch = Collator(processor, family, prompt, train=True)(rows)
    # the processor's own labels, from its own call with the answer as suffix
    from vlmqc.prompts import instruction

    own = processor(
        text=["<image>" + instruction(prompt, "pair", 1) for _ in rows],
        images=[r["image"] for r in rows],
        suffix=[render_answer(prompt, r) for r in rows],
        return_tensors="pt",
        padding=True,
        padding_side="right",
    )
    assert torch.equal(batch["input_ids"], own["input_ids"])
    assert torch.equal(batch["labels"], torch.as_tensor(own["labels"]).masked_fill(own["attention_mask"] == 0, IGNORE))
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == render_answer(prompt, ex) + "<eos>"  # the answer and the end of it, nothing else
        # the suffix (answer + eos) is token type 1, the prefix (images, bos, instruction) 0
        real = batch["attention_mask"][i].bool()
        assert torch.equal(batch["token_type_ids"][i][real] == 1, batch["labels"][i][real] != IGNORE)
    assert int((batch["input_ids"][0] == model.config.image_token_id).sum()) == (224 // 16) ** 2
    # the prefix attends both ways: a prefix token's output changes when a later prefix token does
    with torch.no_grad():
        out = model(**batch).logits
        changed = batch["input_ids"].clone()
        n = int((batch["token_type_ids"][0] == 0).sum()) - 2  # a prefix token near the prefix's end
        changed[0, n] = tok.convert_tokens_to_ids("<bos>")
        out2 = model(**{**batch, "input_ids": changed}).logits
    assert not torch.allclose(out[0, n - 5], out2[0, n - 5])
    generate = Collator(processor, family, prompt, train=False)(rows)
    assert "token_type_ids" in generate and "labels" not in generate  # generation gets the prefix mask, no labels


def test_image_size_is_the_towers_fixed_size(tiny, tmp_path):
    model, processor, family, _ = tiny
    family.set_image_size(processor, model, 224)
    assert processor.image_processor.size == {"height": 224, "width": 224}
    with pytest.raises(
        ConfigError, match=r"image_size.size=448: .* built for 224 x 224 .*use image_size=native or 224"
    ):
        family.set_image_size(processor, model, 448)


def test_the_image_facts_are_the_processors(tiny):
    model, processor, family, _ = tiny
    rows = [pair(size=(500, 250))]
    batch = Collator(processor, family, prompt_option("short"), train=True)(rows)
    facts = family.image_facts(processor, model, [rows[0]["image"]], batch)
    assert facts.input_pixels == [[250, 500]] and facts.processed_pixels == [[224, 224]] and facts.tiles == [1]
    assert facts.image_tokens == processor.image_seq_length == (224 // 16) ** 2


def test_every_linear_layer_falls_in_its_part(tiny):
    model, _, family, _ = tiny
    parts = {
        n: family.part(n)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()
    }
    assert {p for n, p in parts.items() if n.startswith("model.vision_tower.")} == {"vision"}
    assert {p for n, p in parts.items() if n.startswith("model.language_model.")} == {"language"}
    assert {p for n, p in parts.items() if n.startswith("model.multi_modal_projector.")} == {"projector"}
    assert "other" not in parts.values()


def test_the_separate_layout_is_refused_at_the_door():
    with pytest.raises(ConfigError, match=r"data.layout=separate: the paligemma family takes one image"):
        PG.check(PG.tiny_config(), ImageSizeConfig(name="native"), Layout.separate)


def test_the_offline_processor_sees_what_the_published_448_checkpoint_sees():
    cfg = to_object(compose_app("train", ["model=paligemma2_3b_448"]).model, "model")
    assert cfg.family == "paligemma" and cfg.path == "google/paligemma2-3b-pt-448"
    processor, config = PG.offline_processor(cfg.processor)
    assert config.model_type == "paligemma" and config.vision_config.image_size == 448
    batch = PG.encode(processor, ["Is it defective?"], [[Image.new("RGB", (640, 480))]], None, "right")
    assert batch["pixel_values"].shape[-2:] == (448, 448)
    assert int((batch["input_ids"] == config.image_token_id).sum()) == (448 // 14) ** 2 == 1024
    with pytest.raises(ConfigError, match=r"built for 448 x 448"):
        PG.set_image_size(processor, type("M", (), {"config": config})(), 224)
