"""``model=qwen2_vl_2b_random``: a Qwen2-VL of the 2B shape with random weights, built offline.

The full-size shape is checked without allocating it (meta tensors); everything that runs uses
the same preset shrunk through its shape fields, as a CI machine runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose_app, pair_row, prompt_option
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError
from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import (
    ConfigError,
    ImageSizeConfig,
    LoraConfig,
    LoraTarget,
    ModelConfig,
    Qwen2VLModelConfig,
    to_object,
)
from vlmqc.evaluation.generate import predict
from vlmqc.models import adapt, families, load, random_checkpoint
from vlmqc.models.qwen2_vl import TOKENS
from vlmqc.models.qwen2_vl import config as qwen2_vl_config
from vlmqc.prompts import render_answer

QWEN = families()["qwen2_vl"]
_part = QWEN.part

# the preset shrunk for a CPU: every shape field that sets the cost, nothing else
SHRINK = {
    "text": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 2048,
        "mrope_section": [2, 3, 3],
    },
    "vision": {"depth": 2, "embed_dim": 32, "num_heads": 2},
}
OVERRIDES = [
    f"model.qwen2_vl.{part}.{k}={v}".replace(" ", "") for part, fields in SHRINK.items() for k, v in fields.items()
]
# Qwen2-VL-2B-Instruct as published: 4,417,971,200 bytes of bf16 weights (model.safetensors.index.json)
PARAMETERS_2B = 4_417_971_200 // 2


def preset(*overrides: str) -> ModelConfig:
    return to_object(compose_app("train", ["model=qwen2_vl_2b_random", *overrides]).model, "model")


@pytest.fixture(scope="module")
def small(models_dir):
    """The shrunk preset, loaded as a trial loads it: model, processor, folder."""
    return load(preset(*OVERRIDES), ImageSizeConfig(name="native"), str(models_dir), "cpu")


def pair(verdict="defective", size=(448, 386)):
    return pair_row(verdict, size, id=f"test-{verdict}-{size[1]}")


def test_the_preset_is_the_2b_shape_and_its_file_states_the_schema_defaults():
    cfg = preset()
    assert cfg.random == "qwen2_vl" and cfg.path is None
    assert cfg.qwen2_vl == Qwen2VLModelConfig()  # the option file restates the defaults: they must agree
    config = qwen2_vl_config(cfg.qwen2_vl, {t: i for i, t in enumerate(TOKENS)})
    text, vision = config.text_config, config.vision_config
    assert (
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.intermediate_size,
        text.vocab_size,
    ) == (
        1536,
        28,
        12,
        2,
        8960,
        151936,
    )
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (
        vision.depth,
        vision.embed_dim,
        vision.num_heads,
        vision.mlp_ratio,
        vision.patch_size,
        vision.spatial_merge_size,
        vision.temporal_patch_size,
        vision.hidden_size,
    ) == (
        32,
        1280,
        16,
        4,
        14,
        2,
        2,
        1536,
    )
    assert config.tie_word_embeddings
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = Qwen2VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    assert 2.1e9 < total < 2.3e9
    assert total == PARAMETERS_2B
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_the_built_checkpoint_is_reused_and_loads_through_the_auto_classes(small, models_dir):
    _, _, _, path = small
    cfg = preset(*OVERRIDES).qwen2_vl
    mtime = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns
    assert str(random_checkpoint(preset(*OVERRIDES), None, models_dir)) == path
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == mtime  # reused, not rebuilt
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".tmp-")]
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    assert model.config.text_config.vocab_size == 2048 and model.config.vision_config.depth == 2
    processor = QWEN.load_processor(path, False)
    assert isinstance(processor, Qwen2VLProcessor)  # without torchvision: the same class, minus its video processor
    tok = processor.tokenizer
    assert len(tok) <= cfg.tokenizer_vocab_size <= model.config.text_config.vocab_size
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for text in ["The bottom product is defective: missing terminal at C5.", "下の製品は不良です：C5 端子欠落"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.skipif(
    not is_torchvision_available(), reason="AutoProcessor builds Qwen2-VL's video processor only with torchvision"
)
def test_with_torchvision_autoprocessor_gives_the_full_qwen2_vl_processor(small):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(small[3])
    assert type(processor) is Qwen2VLProcessor and processor.video_processor is not None


def test_a_pair_becomes_image_tokens_within_the_pixel_budget(small):
    model, processor, family, _ = small
    batch = Collator(processor, family, prompt_option("short"), train=False)([pair()])
    t, h, w = batch["image_grid_thw"][0].tolist()
    assert t == 1 and h * w * 14 * 14 <= 448 * 448
    assert (
        int((batch["input_ids"] == model.config.image_token_id).sum()) == h * w // 4
    )  # 2 x 2 patches merge into one token
    assert 150 < h * w // 4 < 400  # a few hundred image tokens


def test_image_size_is_a_pixel_budget_and_native_is_the_presets(models_dir):
    cfg = preset(*OVERRIDES)
    _, processor, _, _ = load(cfg, ImageSizeConfig(name="224", size=224), str(models_dir), "cpu")
    assert processor.image_processor.size["longest_edge"] == 224 * 224
    _, h, w = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[pair()["image"]], return_tensors="pt"
    )["image_grid_thw"][0].tolist()
    assert h * w * 14 * 14 <= 224 * 224 and abs(w / h - 448 / 386) < 0.2  # the aspect ratio is kept
    _, native, _, _ = load(cfg, ImageSizeConfig(name="native"), str(models_dir), "cpu")
    assert native.image_processor.size["longest_edge"] == cfg.qwen2_vl.max_pixels == 448 * 448
    with pytest.raises(ConfigError, match=r"image_size.size=32"):
        load(cfg, ImageSizeConfig(name="32", size=32), str(models_dir), "cpu")


def test_a_collated_pair_batch_trains_on_the_answer_only(small):
    model, processor, family, _ = small
    prompt = prompt_option("short")
    rows = [pair(), pair("pass", size=(448, 300))]
    batch = Collator(processor, family, prompt, train=True)(rows)
    tok = processor.tokenizer
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert tok.decode(learnt) == render_answer(prompt, ex) + "<|im_end|>\n"  # the end of the turn is learnt
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    assert model.model.language_model.layers[0].mlp.down_proj.weight.grad is not None
    model.zero_grad()


def test_batched_greedy_generation_answers_every_row(small):
    model, processor, family, _ = small
    rows = [pair(), pair("pass", size=(448, 300)), pair(size=(300, 300))]
    out = predict(model, processor, family, prompt_option("short"), rows, batch_size=2, max_new_tokens=6)
    assert [p["id"] for p in out] == [r["id"] for r in rows]
    assert all(isinstance(p["text"], str) for p in out)


@pytest.mark.parametrize(
    "target, parts",
    [
        (LoraTarget.language, {"language"}),
        (LoraTarget.language_vision, {"language", "vision", "projector"}),
        (LoraTarget.all_linear, {"language", "vision", "projector"}),
    ],
)
def test_lora_adapts_exactly_the_chosen_parts(models_dir, target, parts):
    model, _, family, _ = load(preset(*OVERRIDES), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    model = adapt(model, family, LoraConfig(name="r4", r=4, alpha=8, target=target))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {_part(n) for n in trainable} == parts
    if target == LoraTarget.language:
        assert all(".language_model.layers." in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)


def test_the_merger_is_the_projector_and_trains_in_full_fine_tuning(models_dir):
    assert _part("model.visual.merger.mlp.0") == "projector" and _part("model.visual.blocks.0.attn.qkv") == "vision"
    model, _, family, _ = load(preset(*OVERRIDES), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    model = adapt(model, family, LoraConfig(name="full", full=True))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("model.visual.") and ".merger." not in n for n in frozen)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.qwen2_vl.text.mrope_section=[16,24,16]", "model.qwen2_vl.text.mrope_section"),
        ("model.qwen2_vl.text.num_key_value_heads=5", "model.qwen2_vl.text.num_key_value_heads=5"),
        ("model.qwen2_vl.vision.depth=0", "model.qwen2_vl.vision.depth=0"),
        ("model.qwen2_vl.text.vocab_size=100", "model.qwen2_vl.text.vocab_size=100"),
        ("model.qwen2_vl.max_pixels=1000", "model.qwen2_vl.max_pixels=1000"),
    ],
)
def test_a_bad_shape_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        preset(override)


def test_a_typo_in_a_shape_key_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_app("train", ["model=qwen2_vl_2b_random", "model.qwen2_vl.text.hiden_size=64"])
    assert "hiden_size" in str(e.value) + str(e.value.__cause__)


@pytest.mark.slow
def test_a_short_trial_of_the_shrunk_preset_completes(tmp_path):
    env = {**os.environ, "VLMQC_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "vlmqc.train",
        f"hydra.run.dir={tmp_path / 'run'}",
        "model=qwen2_vl_2b_random",
        *OVERRIDES,
    ]
    command += [
        "data=pair_round",
        "data.train_size=8",
        "data.test_size=4",
        "trainer.max_steps=2",
        "trainer.samples=2",
        "trainer.max_new_tokens=8",
        "logger=none",
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    facts = summary["facts"]
    assert "qwen2_vl-random-" in facts["model_path"]
    assert 150 < facts["image_tokens_per_sample"] < 400
    # the resolution the tower saw, in pixels: the patch grid, within the 448 x 448 pixel budget
    h, w = facts["processed_resolution"]
    assert (
        h % 28 == 0 and w % 28 == 0 and h * w <= 448 * 448 and (h // 28) * (w // 28) == facts["image_tokens_per_sample"]
    )
    assert 0 < facts["trainable_parameters"] < facts["total_parameters"]
    assert "eval/loss" in summary["final"] and "eval/verdict_accuracy" in summary["final"]
