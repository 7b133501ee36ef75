"""vlmqc.inspect: its numbers against the real processor's output, Qwen2-VL's resize formula, a
trial's recorded facts and a measured activation count; the app as a user runs it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_app, run_app
from PIL import Image

from vlmqc.collate import Collator
from vlmqc.config import ImageSizeConfig, LoraConfig, ModelConfig
from vlmqc.data import get_dataset
from vlmqc.data.layout import images as row_images
from vlmqc.models import adapt, families, load
from vlmqc.models.family import ImageFacts
from vlmqc.preflight import validate
from vlmqc.preview import activation_bytes, preview, source

# Qwen2-VL-2B-Instruct's preprocessor_config.json and config.json, as published
QWEN2_VL_2B = ModelConfig(
    name="qwen2_vl_2b_test",
    path="Qwen/Qwen2-VL-2B-Instruct",
    family="qwen2_vl",
    processor={
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "text_config": {
            "hidden_size": 1536,
            "num_hidden_layers": 28,
            "intermediate_size": 8960,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
        },
        "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4},
    },
)
# llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 (shortest edge 336, centre crop), Vicuna-7B
LLAVA_1_5_7B = ModelConfig(
    name="llava_1_5_7b_test",
    path="llava-hf/llava-1.5-7b-hf",
    family="llava",
    processor={
        "image_size": 336,
        "patch_size": 14,
        "crop_size": 336,
        "shortest_edge": 336,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "text_config": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32064},
        "vision_config": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
        },
    },
)
SMALL = ["data.train_size=8", "data.test_size=4"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


def objs_for(model: ModelConfig, size: ImageSizeConfig | None, data: str = "star", tmp=None):
    cfg = compose_app("preview", [f"data={data}", *SMALL])
    cfg.paths.output_dir = "."
    objs = validate(cfg)
    objs["model"], objs["image_size"] = model, size
    dsd, _ = get_dataset(objs["data"], tmp, num_workers=1, progress=False)
    return objs, list(dsd["test"])


def qwen_resize(h: int, w: int, lo: int, hi: int, factor: int = 28) -> tuple[int, int]:
    """Qwen2-VL's smart_resize, as its model card states it: sides rounded to multiples of 28, the
    area scaled into [min_pixels, max_pixels] keeping the aspect ratio."""
    hh, ww = round(h / factor) * factor, round(w / factor) * factor
    if hh * ww > hi:
        beta = math.sqrt(h * w / hi)
        hh, ww = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hh * ww < lo:
        beta = math.sqrt(lo / (h * w))
        hh, ww = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hh, ww


@pytest.mark.parametrize("family, size", [("llava", None), ("llava", 336), ("qwen2_vl", None), ("qwen2_vl", 336)])
def test_numbers_agree_with_the_real_processor_on_the_tiny_models(family, size, models_dir, tmp_path):
    model = ModelConfig(name="tiny") if family == "llava" else families()["qwen2_vl"].tiny_config()
    image_size = ImageSizeConfig(name=str(size or "native"), size=size)
    data = "star" if family == "llava" else "pair_round"
    objs, rows = objs_for(model, image_size, data, tmp_path)
    table, _ = preview(objs, models_dir, rows[:2])
    fam, processor, _, _ = source(model, image_size, models_dir, str(tmp_path))
    for row, shown in zip(rows[:2], table, strict=True):
        images = row_images(row, objs["data"].layout)
        # the processor itself, called directly on the example's text and images
        text = fam.text(processor, "Q", len(images), "A")
        prompt = Collator(processor, fam, objs["prompt"], True, objs["data"].layout)([row])
        out = processor(text=[text], images=images, return_tensors="pt")
        image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        assert shown.facts.image_tokens == int((out["input_ids"] == image_id).sum())
        assert shown.sequence == prompt["input_ids"].shape[1]
        assert shown.facts.input_pixels == [[im.height, im.width] for im in images]
        if family == "llava":
            side = size or 224  # the tiny tower's native size, patch 16, plus nothing: "default" drops CLS
            assert list(out["pixel_values"].shape) == [1, 3, side, side]
            assert shown.facts.processed_pixels == [[side, side]] and shown.facts.tiles == [1]
            assert shown.facts.image_tokens == (side // 16) ** 2
        else:
            grids = out["image_grid_thw"].tolist()
            assert shown.facts.processed_pixels == [[h * 14, w * 14] for _, h, w in grids]
            budget = (size or 224) ** 2  # the tiny model's max_pixels: 224 x 224
            expected = [qwen_resize(im.height, im.width, 3136, budget) for im in images]
            assert shown.facts.processed_pixels == [list(e) for e in expected]
            assert shown.facts.image_tokens == sum(h * w // 784 for h, w in expected)


# the two largest images at the native budget (12 and 25 million pixels) take seconds each to
# process: slow-marked; the default run resizes the same images to the 448 budget
SIZES = [(190, 448), (380, 448), (1000, 500), (30, 40), (4000, 3000), (5000, 5000)]
RESIZES = [
    pytest.param(
        hw, size, id=f"{size}-hw{i}", marks=[pytest.mark.slow] if size is None and hw[0] * hw[1] > 10**7 else []
    )
    for size in (None, 448)
    for i, hw in enumerate(SIZES)
]


@pytest.mark.parametrize("hw, size", RESIZES)
def test_qwen2_vl_numbers_follow_the_published_resize_formula(hw, size):
    image_size = ImageSizeConfig(name=str(size or "native"), size=size)
    fam, processor, config, _ = source(QWEN2_VL_2B, image_size, "unused", "unused")
    image = Image.new("RGB", (hw[1], hw[0]))
    batch = fam.encode(processor, ["Q"], [[image]], ["A"], "right")
    facts = fam.image_facts(processor, type("M", (), {"config": config}), [image], batch)
    h, w = qwen_resize(*hw, 3136, size * size if size else 12845056)
    assert facts.processed_pixels == [[h, w]]
    assert facts.image_tokens == (h // 28) * (w // 28)


def test_llava_1_5_offline_is_336_pixels_and_576_tokens_and_refuses_another_size():
    from vlmqc.config import ConfigError

    fam, processor, config, _ = source(LLAVA_1_5_7B, ImageSizeConfig(name="native"), "unused")
    image = Image.new("RGB", (448, 380))
    facts = fam.image_facts(
        processor, type("M", (), {"config": config}), [image], fam.encode(processor, ["Q"], [[image]], ["A"], "right")
    )
    assert facts.processed_pixels == [[336, 336]] and facts.image_tokens == 576
    with pytest.raises(ConfigError, match="336"):
        source(LLAVA_1_5_7B, ImageSizeConfig(name="448", size=448), "unused")


def test_the_estimate_is_within_a_factor_of_two_of_the_measured_saved_activations(models_dir, tmp_path):
    """What autograd keeps for backward, summed over distinct storages (weights left out), on the
    tiny LLaVA with LoRA r16 on the language model, fp32, one sample."""
    model_cfg = ModelConfig(name="tiny")
    objs, rows = objs_for(model_cfg, ImageSizeConfig(name="native"), "star", tmp_path)
    model, processor, family, _ = load(model_cfg, ImageSizeConfig(name="native"), models_dir, "cpu")
    model = adapt(model, family, LoraConfig(name="r16", dropout=0.0))
    model.train()
    batch = Collator(processor, family, objs["prompt"], True)([rows[0]])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    measured = sum(seen.values())
    facts = family.image_facts(processor, model, row_images(rows[0], objs["data"].layout), batch)
    estimate = activation_bytes(model.config, facts, batch["input_ids"].shape[1], 4, vision_trains=False)
    print(
        f"tiny llava, one sample, fp32: estimate {estimate} B, measured {measured} B, ratio {estimate / measured:.2f}"
    )
    assert 0.5 < estimate / measured < 2


@pytest.mark.slow  # a trial and the app, each in its own process
def test_inspect_reports_what_a_trial_records(models_dir, tmp_path):
    overrides = ["data=star", *SMALL, "image_size=224"]
    trial = run_app(
        tmp_path,
        "vlmqc.train",
        f"hydra.run.dir={tmp_path / 'run'}",
        "logger=none",
        "trainer.max_steps=1",
        "trainer.eval_before=false",
        "trainer.eval_limit=2",
        "trainer.samples=0",
        *overrides,
    )
    assert trial.returncode == 0, trial.stderr[-2000:]
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["facts"]
    out = run_app(tmp_path, "vlmqc.inspect", *overrides, "examples=1")
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(li for li in out.stdout.splitlines() if li.startswith("224 "))
    cells = line.split()
    images = ImageFacts(**recorded["images"])
    h, w = images.input_pixels[0]
    assert cells[2:6] == [
        f"{h}x{w}",
        "x".join(map(str, recorded["processed_resolution"])),
        str(images.tiles[0]),
        str(recorded["image_tokens_per_sample"]),
    ]


@pytest.mark.slow  # the app in its own process; preview() itself is tested in-process above
def test_the_app_prints_the_table(tmp_path):
    out = run_app(tmp_path, "vlmqc.inspect", "model=tiny", "data=star", *SMALL, "image_size=224")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "image tok" in out.stdout and "act/batch of 8" in out.stdout
    assert " 196 " in out.stdout  # (224 / 16)^2 image tokens
    assert not (tmp_path / "outputs").exists()


CONFIG_ERRORS = [
    (["examples=0"], "examples"),
    (["model.path=org/some-model", "model.family=nope"], "model.family"),
    (["image_size=999"], "image_size"),
]


@pytest.mark.parametrize("args, key", CONFIG_ERRORS)
def test_a_config_error_is_refused_naming_the_key(cli_exit, args, key):
    code, err = cli_exit("vlmqc.inspect", *args)
    assert code == 2 and key in err, err[-2000:]


@pytest.mark.slow  # the same in a real process each (tests/test_config.py runs one in the default run)
@pytest.mark.parametrize("args, key", CONFIG_ERRORS)
def test_a_config_error_exits_2_naming_the_key(args, key, tmp_path):
    out = run_app(tmp_path, "vlmqc.inspect", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert key in out.stderr


def test_inspect_draws_only_what_it_shows_and_writes_no_model(tmp_path):
    """The README's own example: Qwen2-VL-2B's shape (4.4 GB of random weights) and one example.
    inspect needs the processor and the config's shapes, not weights, and the examples it shows,
    not the dataset: it wrote 4.2 GB to the cache and drew all 800 images (issue 21)."""
    out = run_app(
        tmp_path, "vlmqc.inspect", "model=qwen2_vl_2b_random", "data=pair_round", "image_size=448", "examples=1"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(li for li in out.stdout.splitlines() if li.startswith("448 "))
    assert "built without weights" in out.stdout
    cells = line.split()
    ih, iw = map(int, cells[2].split("x"))  # the stacked pair as drawn, then the 2B processor's pixel budget
    assert iw == 448 and 300 < ih < 400
    h, w = qwen_resize(ih, iw, 3136, 448 * 448)
    assert cells[3] == f"{h}x{w}" and cells[5] == str(h * w // 784)
    written = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] if (tmp_path / "cache").exists() else []
    assert written == [], written  # no dataset built, no model saved: nothing is cached
