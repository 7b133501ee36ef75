"""The vision feature cache (vlmqc/features.py): the cached path computes what the plain path
computes, on the tiny LLaVA and the tiny Qwen2-VL, and is refused or misses wherever the features
could differ."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import compose_app, pair_row, prompt_option, run_app
from hydra.errors import ConfigCompositionException
from PIL import Image

from vlmqc import features
from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ImageSizeConfig, Layout, LoraConfig, LoraTarget, ModelConfig, PixelStorage
from vlmqc.models import adapt, families, load
from vlmqc.training.preprocess import EncodedCollator, encode_row

FAMILIES = ["llava", "qwen2_vl"]


def model_config(name: str) -> ModelConfig:
    return ModelConfig(name="tiny") if name == "llava" else families()[name].tiny_config()


def adapted(name: str, models_dir, target: LoraTarget = LoraTarget.language, full: bool = False):
    """The tiny model of a family with LoRA (dropout 0: the two paths must see the same mask), as a trial builds it."""
    model, processor, family, _ = load(model_config(name), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    torch.manual_seed(0)
    model = adapt(model, family, LoraConfig(name="r8", r=8, alpha=16, dropout=0.0, target=target, full=full))
    return model, processor, family


def rows() -> list[dict]:
    noise = Image.fromarray((np.random.default_rng(0).random((386, 448, 3)) * 255).astype("uint8"))
    return [pair_row("defective", id="a"), {**pair_row("pass", id="b"), "image": noise}]


def batch(processor, family, examples=None) -> dict:
    return Collator(processor, family, prompt_option("short"), train=True, image_keys=True)(examples or rows())


def step(model, batch: dict) -> dict:
    """Loss, the logits that predict answer tokens, and every trainable parameter's gradient, of one forward and
    backward."""
    model.zero_grad()
    out = model(**dict(batch))  # a copy: the pre-hook pops the keys from the kwargs, not from the batch
    out.loss.backward()
    answer = batch["labels"][:, 1:] != IGNORE
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return {"loss": out.loss.detach(), "logits": out.logits[:, :-1][answer].detach(), "grads": grads}


def assert_same(a: dict, b: dict) -> None:
    assert torch.equal(a["loss"], b["loss"])
    assert torch.equal(a["logits"], b["logits"])
    assert a["grads"].keys() == b["grads"].keys() and a["grads"]
    for name in a["grads"]:
        assert torch.equal(a["grads"][name], b["grads"][name]), name


def tower_calls(model) -> list:
    """Counts the vision tower's forward calls (a real forward hook on the real module)."""
    calls = []
    tower = next(m for n, m in model.named_modules() if n.endswith(("model.vision_tower", "model.visual")))
    tower.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_path_gives_the_plain_loss_logits_and_gradients_on_misses_and_hits(name, models_dir, tmp_path):
    model, processor, family = adapted(name, models_dir)
    b = batch(processor, family)
    plain = step(model, {k: v for k, v in b.items() if k != features.KEY})

    cache = features.enable(model, family, processor, "disk", tmp_path / "features", "fp32", "cpu")
    assert cache.active, cache.reason
    calls = tower_calls(model)
    assert_same(plain, step(model, b))  # first use: computed (with autograd, once, as the check), stored
    assert cache.stats["train"] == {"hits": 0, "misses": 2} and len(calls) == 1
    assert_same(plain, step(model, b))  # second: from memory, the tower does not run
    assert cache.stats["train"] == {"hits": 2, "misses": 2} and len(calls) == 1

    # another trial of the sweep: the same weights loaded again, an empty memory, the disk cache
    model2, processor2, family2 = adapted(name, models_dir)
    cache2 = features.enable(model2, family2, processor2, "disk", tmp_path / "features", "fp32", "cpu")
    assert cache2.fingerprint == cache.fingerprint and not cache2.memory
    calls2 = tower_calls(model2)
    assert_same(plain, step(model2, b))
    assert cache2.stats["train"] == {"hits": 2, "misses": 0} and cache2.stats["disk_hits"] == 2 and not calls2
    assert len(list((tmp_path / "features" / cache.fingerprint).glob("*/*.safetensors"))) == 2


def test_the_memory_tier_stays_under_its_bound(models_dir, tmp_path):
    """trainer.vision_cache_memory_gb bounds the host RAM the cache holds: past it, disk mode
    reads the features from disk and memory mode computes them again; the loss, logits and
    gradients are the plain path's either way."""
    model, processor, family = adapted("llava", models_dir)
    b = batch(processor, family)
    plain = step(model, {k: v for k, v in b.items() if k != features.KEY})

    # room for one image's features of the two: the first is kept, the bound is recorded
    probe = features.enable(model, family, processor, "memory", None, "fp32", "cpu")
    step(model, b)
    one = next(iter(probe.memory.values()))
    size = one.numel() * one.element_size()

    model1, processor1, family1 = adapted(
        "llava", models_dir
    )  # a fresh model: the probe's hook would take the keys first
    cache = features.enable(model1, family1, processor1, "memory", None, "fp32", "cpu", memory_gb=1.5 * size / 2**30)
    calls = tower_calls(model1)
    assert_same(plain, step(model1, b))
    assert len(cache.memory) == 1 and cache.memory_bytes == size and cache.memory_full
    assert_same(plain, step(model1, b))  # one image not kept: the batch is computed again
    assert cache.stats["train"] == {"hits": 0, "misses": 4} and len(calls) == 2
    facts = features.facts(cache)
    assert facts["memory_full"] and facts["memory_bytes"] == size and facts["cached_images"] == 1

    # no memory tier at all, disk mode: every hit is read from disk, nothing is held in memory
    model2, processor2, family2 = adapted("llava", models_dir)
    disk = features.enable(model2, family2, processor2, "disk", tmp_path / "features", "fp32", "cpu", memory_gb=0)
    calls2 = tower_calls(model2)
    assert_same(plain, step(model2, b))
    assert_same(plain, step(model2, b))
    assert disk.stats["train"] == {"hits": 2, "misses": 2} and disk.stats["disk_hits"] == 2 and len(calls2) == 1
    assert not disk.memory and disk.memory_bytes == 0 and disk.memory_full


def test_the_memory_bound_is_validated():
    from vlmqc.config import ConfigError, TrainerConfig

    with pytest.raises(ConfigError, match="vision_cache_memory_gb"):
        TrainerConfig(vision_cache_memory_gb=-1)


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluation_batches_use_the_cache_without_autograd(name, models_dir, tmp_path):
    model, processor, family = adapted(name, models_dir)
    b = batch(processor, family)
    cache = features.enable(model, family, processor, "memory", None, "fp32", "cpu")
    with torch.no_grad():
        first = model(**dict(b)).logits
        again = model(**dict(b)).logits
    assert torch.equal(first, again)
    assert cache.stats["eval"] == {"hits": 2, "misses": 2} and cache.stats["train"] == {"hits": 0, "misses": 0}


@pytest.mark.parametrize(("target", "full"), [(LoraTarget.language_vision, False), (LoraTarget.language, True)])
def test_a_trainable_image_path_disables_the_cache(models_dir, target, full):
    """LoRA on the tower, or full fine-tuning (which trains the projector): refused, read from requires_grad."""
    model, processor, family = adapted("llava", models_dir, target, full)
    cache = features.enable(model, family, processor, "memory", None, "fp32", "cpu")
    assert not cache.active and "trains" in cache.reason
    assert features.facts(cache)["used"] is False
    assert features.KEY not in Collator(processor, family, prompt_option("short"), train=True, image_keys=cache.active)(
        rows()
    )


def test_a_tower_made_trainable_after_enabling_stops_the_cache_on_its_first_training_step(models_dir):
    model, processor, family = adapted("llava", models_dir)
    b = batch(processor, family)
    cache = features.enable(model, family, processor, "memory", None, "fp32", "cpu")
    projector = next(p for n, p in model.named_parameters() if family.part(n) == "projector")
    projector.requires_grad_(True)
    model(**dict(b)).loss.backward()
    assert projector.grad is not None and projector.grad.abs().sum() > 0  # computed with autograd: it trained
    assert not cache.active and "require grad" in cache.reason and not cache.memory
    model(**dict(b)).loss.backward()
    assert cache.stats["train"]["hits"] == 0


def test_a_changed_image_resolution_weight_or_precision_misses(models_dir, tmp_path):
    model, processor, family = adapted("qwen2_vl", models_dir)
    base = features.fingerprint(model.get_base_model(), family, processor, "fp32", "cpu")[0]
    assert base == features.fingerprint(model.get_base_model(), family, processor, "fp32", "cpu")[0]
    assert base != features.fingerprint(model.get_base_model(), family, processor, "bf16", "cpu")[0]
    assert base != features.fingerprint(model.get_base_model(), family, processor, "fp32", "cuda")[0]
    # the LoRA weights of the language model do not change the image features: a sweep over lr or rank reuses them
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora.add_(1.0)
    assert base == features.fingerprint(model.get_base_model(), family, processor, "fp32", "cpu")[0]
    ip = processor.image_processor
    size = dict(ip.size)
    ip.size = {**size, "longest_edge": size["longest_edge"] // 2}  # a smaller pixel budget
    assert base != features.fingerprint(model.get_base_model(), family, processor, "fp32", "cpu")[0]
    ip.size = size
    vision = next(p for n, p in model.named_parameters() if family.part(n) == "vision")
    with torch.no_grad():
        vision.view(-1)[0] += 1e-3
    assert base != features.fingerprint(model.get_base_model(), family, processor, "fp32", "cpu")[0]

    # one changed pixel: another key, a miss
    cache = features.enable(model, family, processor, "disk", tmp_path / "features", "fp32", "cpu")
    examples = rows()
    step(model, batch(processor, family, examples))
    changed = examples[0]["image"].copy()
    changed.putpixel((0, 0), (0, 0, 0))
    assert features.image_key(changed) != features.image_key(examples[0]["image"])
    step(model, batch(processor, family, [{**examples[0], "image": changed}, examples[1]]))
    assert cache.stats["train"] == {"hits": 0, "misses": 4}
    step(model, batch(processor, family, examples))
    assert cache.stats["train"] == {"hits": 2, "misses": 4}


def test_the_switch_is_checked_naming_the_key():
    with pytest.raises(ConfigCompositionException) as e:
        compose_app("train", ["trainer.vision_cache=sometimes"])
    assert "trainer.vision_cache" in str(e.value.__cause__ or e.value)
    assert compose_app("train", []).trainer.vision_cache.value == "off"  # the safe default: transformers' own path


TRIAL = [
    "logger=none",
    "data.train_size=8",
    "data.test_size=4",
    "trainer.epochs=2",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=4",
    # fmt: skip
    "trainer.samples=0",
    "trainer.max_new_tokens=4",
    "trainer.save_steps=100",
    "trainer.logging_steps=1",
    "trainer.vision_cache=disk",
]


@pytest.mark.slow
def test_a_trial_hits_in_its_second_epoch_and_the_next_trial_of_the_sweep_reuses_the_disk(tmp_path):
    first = run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={tmp_path / 'a'}", *TRIAL)
    assert first.returncode == 0, first.stderr[-3000:]
    facts = json.loads((tmp_path / "a" / "summary.json").read_text())["facts"]["vision_cache"]
    assert facts["used"] and facts["mode"] == "disk"
    assert facts["epochs"] == [{"hits": 0, "misses": 8}, {"hits": 8, "misses": 0}]
    assert facts["train_hit_rate"] == 0.5
    assert facts["eval"]["misses"] == 4 and facts["eval"]["hits"] == 4  # eval/loss before and after training
    assert "vision feature cache, epoch 2: 8 hits, 0 misses" in first.stdout + first.stderr  # the log line

    second = run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={tmp_path / 'b'}", *TRIAL, "trainer.lr=3e-3")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "b" / "summary.json").read_text())["facts"]["vision_cache"]
    assert again["fingerprint"] == facts["fingerprint"]
    assert again["epochs"] == [{"hits": 8, "misses": 0}, {"hits": 8, "misses": 0}]
    assert again["disk_hits"] == 12 and again["disk_writes"] == 0


def test_encoded_rows_carry_the_collators_image_keys(models_dir):
    """trainer.preprocess=once with the cache: the encoded rows' key column (features.row_keys,
    added as vlmqc/train.py adds it, through Arrow) gives EncodedCollator's batch the keys, in the
    order, that Collator(image_keys=True) gives the raw rows, and the same tensors."""
    _, processor, family = adapted("llava", models_dir)
    examples = [
        *rows(),
        {**pair_row("pass", (448, 190), "c"), "task": "star", "verdict": "", "defects": [], "target": "U3"},
    ]
    plain = Collator(processor, family, prompt_option("short"), train=True)
    encoded = datasets.Dataset.from_dict({"tensors": [encode_row(plain, r, PixelStorage.fp32) for r in examples]})
    encoded = encoded.add_column(features.KEY, features.row_keys(examples, Layout.stacked))
    got = EncodedCollator(plain)([encoded[i] for i in range(len(examples))])
    want = batch(processor, family, examples)
    assert got[features.KEY] == want[features.KEY] and len(set(want[features.KEY])) == 3  # three different images
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want if k != features.KEY)


def train_losses(run) -> list[float]:
    return [
        r["train/loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]


@pytest.mark.slow
def test_a_trial_with_preprocess_once_and_the_memory_cache_hits_in_epoch_2_and_trains_as_without_them(tmp_path):
    """The two levers together, in a real trial (LoRA on the language model): epoch 2 takes every
    image's features from memory, and the training losses are those of the trial with both off."""
    both = [*TRIAL[:-1], "trainer.eval_before=false", "trainer.preprocess=once", "trainer.vision_cache=memory"]
    on = run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={tmp_path / 'on'}", *both)
    assert on.returncode == 0, on.stderr[-3000:]
    facts = json.loads((tmp_path / "on" / "summary.json").read_text())["facts"]
    assert facts["preprocess"]["mode"] == "once" and facts["vision_cache"]["used"]
    assert facts["vision_cache"]["epochs"] == [{"hits": 0, "misses": 8}, {"hits": 8, "misses": 0}]
    off = run_app(
        tmp_path, "vlmqc.train", f"hydra.run.dir={tmp_path / 'off'}", *TRIAL[:-1], "trainer.eval_before=false"
    )
    assert off.returncode == 0, off.stderr[-3000:]
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["facts"]["vision_cache"] == {
        "mode": "off",
        "used": False,
    }
    assert len(train_losses(tmp_path / "off")) == 4
    assert train_losses(tmp_path / "on") == train_losses(
        tmp_path / "off"
    )  # the first log's loss, and those of epoch 2, from cached features
