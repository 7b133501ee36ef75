"""trainer.preprocess=once: examples encoded once and stacked give the Collator's own batches,
losses and gradients; the cache is keyed, reused, and never read half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_app, pair_row, prompt_option, run_app
from PIL import Image

from vlmqc.collate import Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig, PixelStorage, data_config
from vlmqc.data import get_dataset
from vlmqc.models import families, load
from vlmqc.preflight import validate
from vlmqc.training import preprocess

# every family whose tiny model runs on the CPU here
FAMILIES = [
    "llava",
    "qwen2_vl",
    "idefics3",
    "llava_onevision",
    "qwen2_5_vl",
    "qwen3_vl",
    "paligemma",
    "gemma3",
    "internvl",
    "phi3_v",
]


@pytest.fixture(scope="module")
def loaded(models_dir):
    """(model, processor, family) of a family's tiny model, loaded once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cfg = ModelConfig(name="tiny") if name == "llava" else families()[name].tiny_config()
            model, processor, family, _ = load(cfg, ImageSizeConfig(name="native"), str(models_dir), "cpu")
            cache[name] = (model, processor, family)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """pair_mixed, 12 training examples: a real cached dataset and its folder."""
    cache = tmp_path_factory.mktemp("data")
    dsd, path = get_dataset(
        data_config(compose_app("train", ["data=pair_mixed", "data.train_size=12", "data.test_size=4"])),
        cache,
        num_workers=1,
        progress=False,
    )
    return dsd, path


def ragged_rows() -> list[dict]:
    """Rows of three sizes and two tasks (noise images: every pixel matters), so that text lengths,
    tiles and image patches differ within the batch and the padding is exercised."""
    rng = np.random.default_rng(0)
    rows = [
        pair_row("defective", (448, 386), "a"),
        pair_row("pass", (448, 190), "b"),
        {**pair_row("pass", (300, 500), "c"), "task": "star", "verdict": "", "defects": [], "target": "U3"},
    ]
    for r in rows:
        r["image"] = Image.fromarray(rng.integers(0, 256, (r["image"].height, r["image"].width, 3), dtype=np.uint8))
    return rows


def assert_same_batch(want: dict, got: dict) -> None:
    assert want.keys() == got.keys()
    for key in want:
        assert want[key].shape == got[key].shape and want[key].dtype == got[key].dtype, key
        assert torch.equal(want[key], got[key]), key


@pytest.mark.parametrize("name", FAMILIES)
def test_stacked_examples_are_the_collators_batch(loaded, name):
    """Each row encoded alone and stacked == the Collator on the batch, for rows whose lengths, sizes and tiles
    differ."""
    _, processor, family = loaded(name)
    collator = Collator(processor, family, prompt_option("short"), train=True)
    rows = ragged_rows()
    got = preprocess.EncodedCollator(collator)(
        [{"tensors": preprocess.encode_row(collator, r, PixelStorage.fp32)} for r in rows]
    )
    assert_same_batch(collator(rows), got)
    assert (got["attention_mask"].sum(1) < got["attention_mask"].shape[1]).any(), (
        "the rows differ in length: padding is tested"
    )


@pytest.mark.parametrize(
    "name, layout",
    [
        ("llava", Layout.stacked),
        ("qwen2_vl", Layout.stacked),
        ("qwen2_vl", Layout.separate),
        ("idefics3", Layout.separate),
    ],
)
def test_the_cached_training_split_gives_the_collators_batches_loss_and_gradients(loaded, dataset, name, layout):
    """Built through the cache (Arrow, read back), in batches of 4: the same batch as the Collator,
    and one training step's loss and every gradient the same."""
    model, processor, family = loaded(name)
    dsd, path = dataset
    prompt = prompt_option("short")
    train, encoded, fact = preprocess.prepare(
        dsd["train"], path, processor, family, prompt, layout, num_workers=1, progress=False
    )
    assert fact["mode"] == "once" and not fact["reused"] and len(train) == len(dsd["train"])
    plain = Collator(processor, family, prompt, train=True, layout=layout)
    for start in range(0, len(train), 4):
        idx = list(range(start, min(start + 4, len(train))))
        assert_same_batch(plain([dsd["train"][i] for i in idx]), encoded([train[i] for i in idx]))
    idx = [0, 5, 7]

    def step(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_step, grads_step = step(plain([dsd["train"][i] for i in idx]))
    loss_once, grads_once = step(encoded([train[i] for i in idx]))
    assert torch.equal(loss_step, loss_once)
    assert grads_step.keys() == grads_once.keys() and grads_step
    assert all(torch.equal(grads_step[n], grads_once[n]) for n in grads_step)
    model.zero_grad()


def test_a_second_prepare_reuses_the_cache_and_another_prompt_does_not(loaded, dataset):
    _, processor, family = loaded("llava")
    dsd, path = dataset
    args = (dsd["train"], path, processor, family)
    _, _, first = preprocess.prepare(*args, prompt_option("long"), Layout.stacked, num_workers=2, progress=False)
    _, _, again = preprocess.prepare(*args, prompt_option("long"), Layout.stacked, num_workers=2, progress=False)
    _, _, other = preprocess.prepare(*args, prompt_option("ja"), Layout.stacked, num_workers=1, progress=False)
    assert not first["reused"] and again["reused"] and again["path"] == first["path"]
    assert not other["reused"] and other["path"] != first["path"]
    assert Path(first["path"]).parent == path.parent and Path(first["path"]).name.startswith(path.name + "-encoded-")


def test_a_half_written_cache_is_rebuilt_not_read(loaded, dataset):
    _, processor, family = loaded("llava")
    dsd, path = dataset
    prompt = prompt_option("json")
    train, _, first = preprocess.prepare(
        dsd["train"], path, processor, family, prompt, Layout.stacked, num_workers=1, progress=False
    )
    expected = [train[i]["tensors"] for i in range(len(train))]
    folder = Path(first["path"])
    (folder / "vlmqc.json").unlink()  # as if the build had stopped before its info file was written
    for arrow in sorted(folder.glob("*/*.arrow"))[1:]:
        arrow.unlink()
    rebuilt, _, fact = preprocess.prepare(
        dsd["train"], path, processor, family, prompt, Layout.stacked, num_workers=1, progress=False
    )
    assert not fact["reused"] and fact["path"] == first["path"]
    assert [rebuilt[i]["tensors"] for i in range(len(rebuilt))] == expected


def test_bf16_pixels_are_the_same_computation_under_bf16_autocast(loaded, dataset):
    """llava: pixel_values stored in bf16 give the loss and gradients of float32 pixels when the
    forward runs under bf16 autocast (the patch conv rounds its input to bf16 either way)."""
    model, processor, family = loaded("llava")
    dsd, path = dataset
    prompt = prompt_option("short")
    train, encoded, fact = preprocess.prepare(
        dsd["train"],
        path,
        processor,
        family,
        prompt,
        Layout.stacked,
        PixelStorage.bf16,
        bf16_training=True,
        num_workers=1,
        progress=False,
    )
    assert fact["pixels"] == "bf16"
    plain = Collator(processor, family, prompt, train=True)
    rows = [0, 1, 2, 3]
    want, got = plain([dsd["train"][i] for i in rows]), encoded([train[i] for i in rows])
    assert got["pixel_values"].dtype == torch.float32 and not torch.equal(
        want["pixel_values"], got["pixel_values"]
    )  # rounded: a real difference

    def step(batch):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (l1, g1), (l2, g2) = step(want), step(got)
    assert torch.equal(l1, l2) and g1.keys() == g2.keys() and all(torch.equal(g1[n], g2[n]) for n in g1)
    model.zero_grad()


def test_bf16_pixels_are_refused_where_they_would_change_the_computation(loaded, dataset):
    dsd, path = dataset
    _, processor, family = loaded("llava")
    with pytest.raises(ConfigError, match=r"trainer.preprocess_pixels=bf16: this trial does not train in bf16"):
        preprocess.prepare(
            dsd["train"],
            path,
            processor,
            family,
            prompt_option("short"),
            Layout.stacked,
            PixelStorage.bf16,
            bf16_training=False,
            num_workers=1,
        )
    _, processor, family = loaded("qwen2_vl")
    with pytest.raises(ConfigError, match=r"trainer.preprocess_pixels=bf16: the qwen2_vl family"):
        preprocess.prepare(
            dsd["train"],
            path,
            processor,
            family,
            prompt_option("short"),
            Layout.stacked,
            PixelStorage.bf16,
            bf16_training=True,
            num_workers=1,
        )


def test_auto_pixels_are_bf16_only_where_bf16_is_the_same_computation(loaded, dataset):
    """trainer.preprocess_pixels=auto: bf16 for bf16 training of a family that allows it, else fp32."""
    dsd, path = dataset
    for name, bf16_training, want in (("llava", True, "bf16"), ("llava", False, "fp32"), ("qwen2_vl", True, "fp32")):
        _, processor, family = loaded(name)
        *_, fact = preprocess.prepare(
            dsd["train"],
            path,
            processor,
            family,
            prompt_option("short"),
            Layout.stacked,
            PixelStorage.auto,
            bf16_training=bf16_training,
            num_workers=1,
            progress=False,
        )
        assert fact["pixels"] == want, (name, bf16_training)


def test_a_family_whose_batches_differ_is_refused_naming_it(loaded):
    """A processor whose batch is not its examples stacked (here: one that centres the pixels on
    the batch's mean) is caught by the check before anything is cached."""
    _, processor, family = loaded("llava")

    class BatchNormalised(type(family)):
        def encode(self, processor, instructions, images, answers, side):
            batch = super().encode(processor, instructions, images, answers, side)
            return {**batch, "pixel_values": batch["pixel_values"] - batch["pixel_values"].mean(0)}

    collator = Collator(processor, BatchNormalised(), prompt_option("short"), train=True)
    with pytest.raises(
        ConfigError, match=r"trainer.preprocess=once: the llava family's processor batches pixel_values differently"
    ):
        preprocess.check(ragged_rows(), collator, preprocess.EncodedCollator(collator), PixelStorage.fp32)


BAD_VALUES = [
    (["trainer.preprocess=sometimes"], "trainer.preprocess"),
    (["trainer.preprocces=once"], "trainer.preprocces"),
    (["trainer.preprocess_pixels=bf16"], "trainer.preprocess_pixels='bf16'"),
]


@pytest.mark.parametrize("overrides, key", BAD_VALUES)
def test_a_bad_value_is_refused_naming_the_key(cli_exit, tmp_path, overrides, key):
    code, err = cli_exit("vlmqc.train", "logger=none", *overrides)
    assert code == 2 and key in err, err[-2000:]
    assert not list(tmp_path.rglob("summary.json"))


@pytest.mark.slow  # the same in a real process each (tests/test_config.py runs one in the default run)
@pytest.mark.parametrize("overrides, key", BAD_VALUES)
def test_a_bad_value_exits_2_naming_the_key(tmp_path, overrides, key):
    out = run_app(tmp_path, "vlmqc.train", "logger=none", *overrides)
    assert out.returncode == 2, out.stderr[-2000:]
    assert key in out.stderr
    assert not list(tmp_path.rglob("summary.json"))


@pytest.mark.parametrize(
    "overrides, rule",
    [
        (
            ["trainer.preprocess=once", "trainer.preprocess_pixels=bf16", "trainer.precision=fp32"],
            "trainer.preprocess_pixels='bf16': is the same computation only when training in bf16",
        ),
        (
            ["trainer.preprocess=once", "trainer.preprocess_pixels=bf16", "trainer.device=cpu"],
            "trainer.preprocess_pixels='bf16': is the same computation only when training in bf16",
        ),
    ],
)
def test_validate_names_the_key(overrides, rule):
    with pytest.raises(ConfigError, match=rule):
        validate(compose_app("train", overrides))


SHORT = [
    "logger=none",
    "data=pair_mixed",
    "data.train_size=16",
    "data.test_size=4",
    "trainer.max_steps=4",
    "trainer.batch_size=4",
    "trainer.logging_steps=1",
    "trainer.eval_before=false",
    "trainer.samples=0",
    "trainer.eval_batch_size=4",
    "trainer.save_steps=100",
]


def losses(run: Path) -> list[float]:
    return [
        r["train/loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]


@pytest.mark.slow
def test_trials_with_preprocess_once_build_then_reuse_the_cache_and_train_as_step_does(tmp_path):
    """Three short trials sharing a dataset cache: once (builds), once again in another folder
    (reuses), step; the three record the same training losses."""
    runs = {name: tmp_path / name for name in ("once", "again", "step")}
    outs = {}
    for name, run in runs.items():
        mode = "step" if name == "step" else "once"
        outs[name] = run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={run}", *SHORT, f"trainer.preprocess={mode}")
        assert outs[name].returncode == 0, outs[name].stderr[-3000:]
    facts = {name: json.loads((run / "summary.json").read_text())["facts"]["preprocess"] for name, run in runs.items()}
    assert facts["step"] == {"mode": "step"}
    assert (
        facts["once"]["mode"] == "once"
        and not facts["once"]["reused"]
        and facts["once"]["examples"] == 16
        and facts["once"]["seconds"] > 0
    )
    assert (
        facts["again"]["reused"]
        and facts["again"]["path"] == facts["once"]["path"]
        and Path(facts["once"]["path"]).is_dir()
    )
    assert "reusing the encoded training split" in outs["again"].stderr + outs["again"].stdout
    assert len(losses(runs["step"])) == 4 and losses(runs["once"]) == losses(runs["step"]) == losses(runs["again"])
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
