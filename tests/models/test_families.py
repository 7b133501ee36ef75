"""Every registered family, through the same loader: the golden smoke test, and the layout at the door.

A family is covered by registering it (``vlmqc.models.FAMILY_MODULES``): its tiny model
(``Family.tiny_config``) trains a few steps on real pair rows, evaluates by generation, and learns
the answer tokens alone; a family that takes several images does the same with
``data.layout=separate``, one that takes one image refuses it, naming the family.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_app, prompt_option, requirement_marks
from transformers import Trainer, set_seed

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, LoraConfig, TrainerConfig, data_config
from vlmqc.data import get_dataset
from vlmqc.data.layout import images as row_images
from vlmqc.evaluation.generate import predict
from vlmqc.evaluation.scoring import score
from vlmqc.models import adapt, families, load
from vlmqc.preflight import validate
from vlmqc.prompts import render_answer
from vlmqc.training.trial import training_arguments

FAMILIES = sorted(families())
# the separate layout's golden runs are slow-marked: the default run trains every family on the
# stacked layout, and tests/training/test_preprocess.py takes the separate layout's loss and gradients
CASES = [
    pytest.param(
        name,
        layout,
        id=f"{name}-{layout.value}",
        marks=[*requirement_marks(families()[name]), *([pytest.mark.slow] if layout is Layout.separate else [])],
    )
    for layout in (Layout.stacked, Layout.separate)
    for name in FAMILIES
    if layout is Layout.stacked or families()[name].multi_image
]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Real pair rows as the data module stores them (their meta records where the pair splits)."""
    cfg = compose_app("train", ["data=pair_round", "data.train_size=8", "data.test_size=4"])
    dsd, _ = get_dataset(data_config(cfg), tmp_path_factory.mktemp("data"), num_workers=1, progress=False)
    return dsd


@pytest.mark.parametrize("name, layout", CASES)
def test_golden_tiny_model_trains_evaluates_and_learns_the_answer_alone(name, layout, rows, models_dir, tmp_path):
    family = families()[name]
    model, processor, loaded, _ = load(
        family.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu", layout
    )
    assert (
        loaded is family and model.config.model_type in family.model_types
    )  # dispatched on the built checkpoint's model_type
    prompt = prompt_option("short")

    # the label mask: the answer's tokens and the end of its turn, nothing of the prompt, images or padding
    train = list(rows["train"])
    batch = Collator(processor, family, prompt, train=True, layout=layout)(train[:2])
    tok = processor.tokenizer
    for i, ex in enumerate(train[:2]):
        real = batch["attention_mask"][i].bool()
        ids, labels = batch["input_ids"][i][real], batch["labels"][i][real]
        start = int((labels != IGNORE).nonzero()[0])
        assert (labels[:start] == IGNORE).all() and torch.equal(
            labels[start:], ids[start:]
        )  # the learnt part is the whole tail
        assert tok.decode(labels[start:].tolist(), skip_special_tokens=True).strip() == render_answer(prompt, ex)
        assert len(labels) - start > len(
            tok(render_answer(prompt, ex), add_special_tokens=False)["input_ids"]
        )  # and the end of the turn
        assert (batch["labels"][i][~real] == IGNORE).all()
    facts = family.image_facts(
        processor, model, row_images(train[0], layout), Collator(processor, family, prompt, True, layout)(train[:1])
    )
    assert (
        len(facts.processed_pixels)
        == len(facts.tiles)
        == len(facts.input_pixels)
        == (2 if layout is Layout.separate else 1)
    )
    assert facts.image_tokens > 0

    # a few steps: every adapter weight moves, nothing frozen does
    set_seed(0)
    model = adapt(model, family, LoraConfig(name="r8", r=8, alpha=16, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = training_arguments(
        TrainerConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_ratio=0.0, logging_steps=1, save_steps=100),
        tmp_path / "run",
        "cpu",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows["train"],
        data_collator=Collator(processor, family, prompt, train=True, layout=layout),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}

    # evaluate: batched generation on the test rows, scored
    test = list(rows["test"])
    preds = predict(model, processor, family, prompt, test, batch_size=2, max_new_tokens=6, layout=layout)
    assert [p["id"] for p in preds] == [r["id"] for r in test]
    assert 0.0 <= score(test, [p["parsed"] for p in preds])["verdict_accuracy"] <= 1.0


@pytest.mark.parametrize("name", [n for n in FAMILIES if not families()[n].multi_image])
def test_a_one_image_family_refuses_the_separate_layout_naming_itself(name, models_dir):
    family = families()[name]
    with pytest.raises(ConfigError, match=rf"data.layout=separate: the {name} family takes one image"):
        load(family.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu", Layout.separate)


def test_the_layout_is_checked_at_the_door(tmp_path):
    def validated(*overrides):
        cfg = compose_app("train", list(overrides))
        cfg.paths.output_dir = str(tmp_path)
        return validate(cfg)

    with pytest.raises(ConfigError, match=r"data.layout=separate: the llava family takes one image"):
        validated("data=pair_round", "data.layout=separate")  # model=tiny: the tiny LLaVA
    with pytest.raises(ConfigError, match=r"layout.*diff task shows one image"):
        validated("data=diff", "data.layout=separate", "model=qwen2_vl_2b_random")
    with pytest.raises(ConfigError, match=r"layout.*star task shows one image"):
        validated("data=star", "data.layout=separate", "model=qwen2_vl_2b_random")
    assert (
        validated("data=pair_round", "data.layout=separate", "model=qwen2_vl_2b_random")["data"].layout
        is Layout.separate
    )
