"""The tiny model: built offline once, loaded like a real checkpoint; resolution; adapters."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmqc.config import ConfigError, ImageSizeConfig, LoraConfig, LoraTarget, ModelConfig
from vlmqc.models import adapt, families, family_for, load, parameter_counts, random_checkpoint

LLAVA = families()["llava"]


def tiny_checkpoint(size, models_dir):
    return random_checkpoint(ModelConfig(name="tiny"), size, models_dir)


def test_tiny_model_is_built_once_and_loads_through_the_auto_classes(models_dir):
    path = tiny_checkpoint(None, models_dir)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_checkpoint(None, models_dir) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".tmp-")]
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == "llava" and model.config.vision_config.image_size == 224
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the red star?"}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (448, 190), (90, 120, 60))], return_tensors="pt")
    assert batch["pixel_values"].shape[-2:] == (224, 224)
    assert (
        int((batch["input_ids"] == model.config.image_token_id).sum()) == (224 // 16) ** 2
    )  # CLS dropped by the default strategy
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert (
        out.shape[1] == batch["input_ids"].shape[1] + 4
        or processor.tokenizer.eos_token_id in out[0, batch["input_ids"].shape[1] :]
    )


def test_tokenizer_encodes_any_text_and_decodes_it_back(models_dir):
    tok = AutoProcessor.from_pretrained(tiny_checkpoint(None, models_dir)).tokenizer
    for text in [
        "The bottom product is defective: missing terminal at C5.",
        "下の製品は不良です：C5 端子欠落",
        '{"verdict": "pass"} ~~ zebra',
    ]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_each_resolution_gets_its_own_tiny_model(models_dir):
    model, processor, _, _ = load(
        ModelConfig(name="tiny"), ImageSizeConfig(name="336", size=336), str(models_dir), "cpu"
    )
    assert model.config.vision_config.image_size == 336
    batch = processor(text=["<image>x"], images=[Image.new("RGB", (100, 50))], return_tensors="pt")
    assert batch["pixel_values"].shape[-2:] == (336, 336)


def test_a_resolution_the_vision_tower_was_not_built_for_fails_naming_the_key(models_dir):
    path = tiny_checkpoint(224, models_dir)
    with pytest.raises(ConfigError, match=r"image_size.size=448.*224"):
        load(ModelConfig(name="llava", path=str(path)), ImageSizeConfig(name="448", size=448), str(models_dir), "cpu")


@pytest.mark.parametrize(
    "target, parts",
    [
        (LoraTarget.language, {"language"}),
        (LoraTarget.language_vision, {"language", "vision", "projector"}),
        (LoraTarget.all_linear, {"language", "vision", "projector"}),
    ],
)
def test_lora_adapts_exactly_the_chosen_parts(models_dir, target, parts):
    model, _, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    model = adapt(model, family, LoraConfig(name="r4", r=4, alpha=8, target=target))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {LLAVA.part(n) for n in trainable} == parts
    assert not any("lm_head" in n for n in trainable)


def test_full_fine_tuning_trains_all_but_the_vision_tower(models_dir):
    model, _, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    model = adapt(model, family, LoraConfig(name="full", full=True))
    frozen = {LLAVA.part(n) for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"vision"}
    trainable, total = parameter_counts(model)
    assert 0 < trainable < total


def test_a_checkpoint_that_does_not_exist_fails_clearly(models_dir):
    with pytest.raises(OSError):
        load(
            ModelConfig(name="llava", path=str(models_dir / "no-such-model")),
            ImageSizeConfig(name="native"),
            str(models_dir),
            "cpu",
        )


def test_dtype_auto_is_fp32_on_cpu(models_dir):
    model, _, family, _ = load(ModelConfig(name="tiny"), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    assert next(model.parameters()).dtype == torch.float32


def test_model_path_loads_any_saved_checkpoint_folder(models_dir, tmp_path):
    """``model.path=<folder>``: the loader only needs what from_pretrained needs."""
    import shutil

    folder = tmp_path / "my-checkpoint"
    shutil.copytree(tiny_checkpoint(None, models_dir), folder)
    model, processor, _, path = load(
        ModelConfig(name="mine", path=str(folder)), ImageSizeConfig(name="native"), str(models_dir), "cpu"
    )
    assert path == str(folder) and model.config.model_type == "llava"
    assert ModelConfig(name="mine", path=str(folder)).trust_remote_code is False


def test_only_the_tiny_model_may_go_without_a_path():
    with pytest.raises(ConfigError, match="path"):
        ModelConfig(name="llava")


def test_an_unknown_model_type_fails_listing_the_supported_ones(tmp_path, models_dir):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match=r"model_type 'bert'.*supported model types: .*llava.*qwen2_vl"):
        load(ModelConfig(name="mine", path=str(tmp_path)), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    assert family_for("llava") is LLAVA


def test_an_unknown_random_model_fails_naming_the_families(models_dir):
    with pytest.raises(ConfigError, match=r"model.random=nope.*families: .*llava.*qwen2_vl"):
        random_checkpoint(ModelConfig(name="x", random="nope"), None, models_dir)
