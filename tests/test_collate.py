"""The label mask: loss on the answer tokens only, found from the prompt, end of turn included."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt_option
from PIL import Image
from transformers import AutoProcessor

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import TinyModelConfig
from vlmqc.model import IMAGE_TOKEN, tiny_checkpoint
from vlmqc.prompts import instruction, render_answer


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return AutoProcessor.from_pretrained(tiny_checkpoint(TinyModelConfig(), None, tmp_path_factory.mktemp("models")))


def row(task="pair", verdict="defective", defects=(("C5", "missing"),), target="", answer="", size=(448, 386)):
    return {
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
    batch = Collator(processor, prompt, train=True)([ex])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    answer = render_answer(prompt, ex)
    assert answer == "The bottom product is defective: missing terminal at C5."
    expected_prompt = tok("<|user|>\n", add_special_tokens=False)["input_ids"] + [image_id] * 196
    expected_prompt += tok("\n" + instruction(prompt, "pair") + "\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    expected_answer = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids == expected_prompt + expected_answer
    assert labels == [IGNORE] * len(expected_prompt) + expected_answer
    assert labels[-1] == tok.eos_token_id  # the end of the turn is learnt
    assert tok.decode([t for t in labels if t != IGNORE], skip_special_tokens=True) == answer


def test_padding_and_prompts_of_different_lengths_are_masked(processor):
    prompt = prompt_option("long")
    rows = [row(), row(task="star", verdict="", defects=(), target="U3", size=(448, 190)), row(verdict="pass", defects=())]
    batch = Collator(processor, prompt, train=True)(rows)
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
    batch = Collator(processor, prompt, train=False)([row(), row(task="star", verdict="", defects=(), target="U3")])
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all()
    last = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert (batch["input_ids"][:, -2] == last).all()  # every prompt ends with the assistant marker and its newline


def test_custom_rows_with_a_free_answer_train_on_that_text(processor):
    ex = row(task="custom", verdict="", defects=(), answer="Scratch near the left edge.")
    batch = Collator(processor, prompt_option("short"), train=True)([ex])
    learnt = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert processor.tokenizer.decode(learnt, skip_special_tokens=True) == "Scratch near the left edge."


def test_a_template_that_breaks_the_prefix_property_fails_loudly(processor):
    broken = AutoProcessor.from_pretrained(processor.tokenizer.name_or_path)
    # the classic mismatch: the generation prompt ends in a newline, the rendered turn in a space
    broken.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% else %}<|assistant|> {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    with pytest.raises(ValueError, match="prefix"):
        Collator(broken, prompt_option("short"), train=True)([row()])


def test_images_of_any_size_become_the_model_resolution(processor):
    batch = Collator(processor, prompt_option("short"), train=True)([row(size=(448, 386)), row(size=(640, 100))])
    assert batch["pixel_values"].shape == torch.Size([2, 3, 224, 224])
