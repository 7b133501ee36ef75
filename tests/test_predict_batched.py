"""Batched greedy generation answers each row as generation one row at a time does (fp32, CPU):
left padding is masked and the positions follow the mask, so batching changes no answer."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.conftest import prompt_option
from vlmqc.collate import Collator
from vlmqc.config import ImageSizeConfig, ModelConfig
from vlmqc.models import load
from vlmqc.predict import predict


def _rows() -> list[dict]:
    """Star and pair rows of different image sizes, so their prompts differ in length and a batch
    pads; noise images, so that each row gets its own answer."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (task, size) in enumerate([("star", (448, 190)), ("pair", (448, 386)), ("star", (448, 190)), ("pair", (448, 386)), ("pair", (448, 386))]):
        image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
        rows.append({"id": f"r{i}", "task": task, "image": image, "verdict": "", "defects": [], "target": "", "answer": "", "meta": "{}"})
    return rows


def test_batched_predictions_equal_one_by_one(models_dir):
    model, processor, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    prompt, rows = prompt_option("long"), _rows()
    mask = Collator(processor, family, prompt, train=False)(rows)["attention_mask"]
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all(), "the batch must be left-padded for the test to mean anything"
    one = predict(model, processor, family, prompt, rows, 1, 6)
    batched = predict(model, processor, family, prompt, rows, len(rows), 6)
    two = predict(model, processor, family, prompt, rows, 2, 6)
    assert [p["id"] for p in batched] == [r["id"] for r in rows]
    assert [p["text"] for p in batched] == [p["text"] for p in one]
    assert [p["text"] for p in two] == [p["text"] for p in one]
    assert len({p["text"] for p in one}) > 1, "every row got the same answer: the comparison would prove nothing"
