"""The label mask: loss on the answer tokens only, found from the prompt, end of turn included."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import prompt_option
from PIL import Image
from transformers import AutoProcessor

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import Layout, ModelConfig
from vlmqc.data.layout import images as row_images
from vlmqc.models import families, random_checkpoint
from vlmqc.models.llava import IMAGE_TOKEN
from vlmqc.prompts import instruction, render_answer

LLAVA, QWEN = families()["llava"], families()["qwen2_vl"]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return AutoProcessor.from_pretrained(
        random_checkpoint(ModelConfig(name="tiny"), None, tmp_path_factory.mktemp("models"))
    )


@pytest.fixture(scope="module")
def qwen_processor(tmp_path_factory):
    return QWEN.load_processor(
        str(random_checkpoint(QWEN.tiny_config(), None, tmp_path_factory.mktemp("models"))), False
    )


def row(
    task="pair", verdict="defective", defects=(("C5", "missing"),), target="", answer="", size=(448, 386), meta=None
):
    return {
        "meta": json.dumps(meta or {}),
        "id": f"test-{task}-{verdict}",
        "task": task,
        "image": Image.new("RGB", size, (120, 130, 140)),
        "verdict": verdict,
        "defects": [{"position": p, "type": t} for p, t in defects],
        "target": target,
        "answer": answer,
    }


def test_golden_label_mask(processor):
    """Tokens, labels and mask of one example, spelled out."""
    prompt = prompt_option("short")
    ex = row()
    batch = Collator(processor, LLAVA, prompt, train=True)([ex])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    answer = render_answer(prompt, ex)
    assert answer == "The bottom product is defective: missing terminal at C5."
    expected_prompt = tok("<|user|>\n", add_special_tokens=False)["input_ids"] + [image_id] * 196
    expected_prompt += tok("\n" + instruction(prompt, "pair") + "\n<|assistant|>\n", add_special_tokens=False)[
        "input_ids"
    ]
    expected_answer = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == expected_prompt + expected_answer
    assert labels == [IGNORE] * len(expected_prompt) + expected_answer
    assert labels[-1] == tok.eos_token_id  # the end of the turn is learnt
    assert tok.decode([t for t in labels if t != IGNORE], skip_special_tokens=True) == answer


def test_padding_and_prompts_of_different_lengths_are_masked(processor):
    prompt = prompt_option("long")
    rows = [
        row(),
        row(task="star", verdict="", defects=(), target="U3", size=(448, 190)),
        row(verdict="pass", defects=()),
    ]
    batch = Collator(processor, LLAVA, prompt, train=True)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape
    for i, ex in enumerate(rows):
        labels = batch["labels"][i]
        learnt = labels[labels != IGNORE].tolist()
        assert processor.tokenizer.decode(learnt, skip_special_tokens=True) == render_answer(prompt, ex)
        assert learnt[-1] == processor.tokenizer.eos_token_id
        assert (labels[batch["attention_mask"][i] == 0] == IGNORE).all()
        assert not (labels == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).any()
    assert batch["attention_mask"][:, 0].all(), "training batches are padded on the right"


def test_generation_batches_are_prompts_padded_on_the_left(processor):
    prompt = prompt_option("json")
    batch = Collator(processor, LLAVA, prompt, train=False)(
        [row(), row(task="star", verdict="", defects=(), target="U3")]
    )
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all()
    last = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert (batch["input_ids"][:, -2] == last).all()  # every prompt ends with the assistant marker and its newline


def test_custom_rows_with_a_free_answer_train_on_that_text(processor):
    ex = row(task="custom", verdict="", defects=(), answer="Scratch near the left edge.")
    batch = Collator(processor, LLAVA, prompt_option("short"), train=True)([ex])
    learnt = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert processor.tokenizer.decode(learnt, skip_special_tokens=True) == "Scratch near the left edge."


def test_a_template_that_breaks_the_prefix_property_fails_loudly(processor):
    broken = AutoProcessor.from_pretrained(processor.tokenizer.name_or_path)
    # the classic mismatch: the generation prompt ends in a newline, the rendered turn in a space
    broken.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{% for c in m['content'] %}{% if c['type'] == "
        "'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% else %}<|assistant|> {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix"):
        Collator(broken, LLAVA, prompt_option("short"), train=True)([row()])


def test_images_of_any_size_become_the_model_resolution(processor):
    batch = Collator(processor, LLAVA, prompt_option("short"), train=True)([row(size=(448, 386)), row(size=(640, 100))])
    assert batch["pixel_values"].shape == torch.Size([2, 3, 224, 224])


def test_a_separate_pair_is_two_images_reference_first_and_the_answer_alone_is_learnt(qwen_processor):
    """data.layout=separate: the stacked pair cut at the gap its meta records, two images in one user turn."""
    prompt = prompt_option("short")
    top = Image.new("RGB", (448, 190), (200, 0, 0))
    pair = Image.new("RGB", (448, 386), (40, 40, 40))
    pair.paste(top, (0, 0))
    pair.paste(Image.new("RGB", (448, 190), (0, 0, 200)), (0, 196))
    ex = {**row(meta={"stack": {"top": 190, "gap": 6}}), "image": pair}
    reference, candidate = row_images(ex, Layout.separate)
    assert reference.size == candidate.size == (448, 190)
    assert reference.getpixel((5, 5)) == (200, 0, 0) and candidate.getpixel((5, 5)) == (
        0,
        0,
        200,
    )  # the gap is left out
    batch = Collator(qwen_processor, QWEN, prompt, train=True, layout=Layout.separate)(
        [ex, row(verdict="pass", defects=(), meta={"stack": {"top": 190, "gap": 6}})]
    )
    tok = qwen_processor.tokenizer
    assert batch["image_grid_thw"].shape[0] == 4  # two images per example
    assert (
        batch["image_grid_thw"][0].tolist() == batch["image_grid_thw"][1].tolist()
    )  # two halves of one size, not the whole
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    text = tok.decode(ids)
    assert (
        text.count("<|vision_start|>") == 2 and instruction(prompt, "pair", 2) in text and prompt.pair_separate in text
    )
    assert (
        text.index("<|vision_end|>") < text.rindex("<|vision_start|>") < text.index(prompt.pair_separate)
    )  # both images, then the words
    learnt = labels[labels != IGNORE].tolist()
    assert tok.decode(learnt) == render_answer(prompt, ex) + "<|im_end|>\n"  # Qwen's turn ends with a newline
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert not (batch["labels"] == image_pad).any() and int((ids == image_pad).sum()) > 0
    short = batch["labels"][1][batch["attention_mask"][1] == 1]
    assert tok.decode(short[short != IGNORE].tolist()) == "The bottom product passed.<|im_end|>\n"


def test_a_stacked_pair_stays_one_image_with_the_pair_wording(qwen_processor):
    prompt = prompt_option("short")
    batch = Collator(qwen_processor, QWEN, prompt, train=False)([row(meta={"stack": {"top": 190, "gap": 6}})])
    text = qwen_processor.tokenizer.decode(batch["input_ids"][0])
    assert batch["image_grid_thw"].shape[0] == 1 and text.count("<|vision_start|>") == 1 and prompt.pair in text
