"""Batched greedy generation answers each row as generation one row at a time does (fp32, CPU):
left padding is masked and the positions follow the mask, so batching changes no answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import prompt_option
from vlmqc.collate import Collator
from vlmqc.config import ImageSizeConfig, ModelConfig
from vlmqc.evaluation.generate import _batches, predict
from vlmqc.models import load


def _rows() -> list[dict]:
    """Star and pair rows of different image sizes, so their prompts differ in length and a batch
    pads; noise images, so that each row gets its own answer."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (task, size) in enumerate(
        [("star", (448, 190)), ("pair", (448, 386)), ("star", (448, 190)), ("pair", (448, 386)), ("pair", (448, 386))]
    ):
        image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
        rows.append(
            {
                "id": f"r{i}",
                "task": task,
                "image": image,
                "verdict": "",
                "defects": [],
                "target": "",
                "answer": "",
                "meta": "{}",
            }
        )
    return rows


def test_batched_predictions_equal_one_by_one(models_dir):
    model, processor, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    prompt, rows = prompt_option("long"), _rows()
    mask = Collator(processor, family, prompt, train=False)(rows)["attention_mask"]
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all(), (
        "the batch must be left-padded for the test to mean anything"
    )
    one = predict(model, processor, family, prompt, rows, 1, 6)
    batched = predict(model, processor, family, prompt, rows, len(rows), 6)
    two = predict(model, processor, family, prompt, rows, 2, 6)
    assert [p["id"] for p in batched] == [r["id"] for r in rows]
    assert [p["text"] for p in batched] == [p["text"] for p in one]
    assert [p["text"] for p in two] == [p["text"] for p in one]
    assert len({p["text"] for p in one}) > 1, "every row got the same answer: the comparison would prove nothing"


def test_collating_workers_give_the_same_answers(models_dir):
    """trainer.eval_workers: batches collated in DataLoader worker processes are the main
    process's batches (the same slices, the same padding), so every answer is the same; 5 rows
    in batches of 2 leave a short last batch, which must stay last."""
    model, processor, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    prompt, rows = prompt_option("long"), _rows()
    here = predict(model, processor, family, prompt, rows, 2, 6)
    workers = predict(model, processor, family, prompt, rows, 2, 6, workers=2)
    assert [p["id"] for p in workers] == [r["id"] for r in rows]
    assert workers == here
    # the answers could agree even on other slices (fp32 batching changes none): the batches themselves are the same
    collate = Collator(processor, family, prompt, train=False)
    mine, theirs = list(_batches(collate, rows, 2, 0)), list(_batches(collate, rows, 2, 2))
    assert [b["input_ids"].shape[0] for b in theirs] == [2, 2, 1]
    assert len(mine) == len(theirs) and all(
        a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(mine, theirs, strict=True)
    )
    assert len({p["text"] for p in here}) > 1, "every row got the same answer: the comparison would prove nothing"


def _rank(rank: int, world: int, init: str, models_dir: str, out: str) -> None:
    import pickle

    import torch.distributed as dist

    from vlmqc.evaluation.generate import predict_sharded

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, processor, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), models_dir, "cpu")
        preds = predict_sharded(model, processor, family, prompt_option("long"), _rows(), 2, 6, workers=1)
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump(preds, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned ranks, each importing torch and transformers: ~40 s on 2 cores
def test_sharded_predictions_with_workers_are_the_single_process_ones(models_dir, tmp_path):
    """2 gloo ranks, batches of 2 over 5 rows (rank 0: batches 0 and 2, the short one; rank 1:
    batch 1), each rank collating in a worker: every rank gets the single process's predictions.
    Spawned ranks: forked ones, whose DataLoader workers fork again, hang in this process tree."""
    import pickle

    import torch.multiprocessing as mp

    model, processor, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    want = predict(model, processor, family, prompt_option("long"), _rows(), 2, 6)
    out = tmp_path / "preds"
    mp.start_processes(
        _rank, args=(2, f"file://{tmp_path / 'rendezvous'}", str(models_dir), str(out)), nprocs=2, start_method="spawn"
    )
    for rank in range(2):
        assert pickle.loads((tmp_path / f"preds.{rank}").read_bytes()) == want, rank
