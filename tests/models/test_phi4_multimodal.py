"""The Phi-4-multimodal family (vlmqc/models/phi4_multimodal.py), transformers' native port: its
preset (no remote code), the crop budget, LoRA parts on the native model's module names (built on
the meta device: nothing allocated), the published remote-code layout refused at the door, and,
where torchvision is installed (its image processor's), the tiny model: dispatch, the answer-only
label mask, image tokens and crops as the processor makes them, inspect's table, the processor
built offline from the preset's facts, and the vision LoRA merged at load. Without torchvision those
are skipped (benchmarks/gpu_families.sh runs them on the GPU machine) and the family refuses, saying
so. The golden smoke test (tests/models/test_families.py) trains and evaluates the same tiny model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_app, pair_row, prompt_option
from PIL import Image
from transformers import AutoModelForCausalLM
from transformers.utils import is_torchvision_available

from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig, to_object
from vlmqc.data import get_dataset
from vlmqc.data.layout import images as row_images
from vlmqc.models import check, families, load
from vlmqc.models.phi4_multimodal import _tokenizer
from vlmqc.preflight import validate
from vlmqc.preview import preview
from vlmqc.prompts import render_answer

PHI4 = families()["phi4_multimodal"]
needs_torchvision = pytest.mark.skipif(
    not is_torchvision_available(),
    reason="the phi4_multimodal family's processor needs torchvision, not installed here "
    "(benchmarks/gpu_families.sh runs it on the GPU machine)",
)


@pytest.fixture(scope="module")
def tiny(models_dir):
    return load(PHI4.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu")


def test_the_preset_is_the_native_port_without_remote_code():
    cfg = to_object(compose_app("train", ["model=phi4_multimodal"]).model, "model")
    assert cfg.path == "microsoft/Phi-4-multimodal-instruct" and cfg.family == "phi4_multimodal"
    assert not cfg.trust_remote_code  # transformers' own phi4_multimodal classes
    assert cfg.processor == {"crop_size": 448, "patch_size": 14, "dynamic_hd": 36}
    assert PHI4.auto_class(False) is AutoModelForCausalLM and PHI4.requires == ("torchvision",)


def test_image_size_sets_dynamic_hd_a_budget_of_whole_448_crops():
    processor = SimpleNamespace(image_processor=SimpleNamespace(size={"height": 448, "width": 448}, dynamic_hd=36))
    PHI4.set_image_size(processor, None, 896)
    assert processor.image_processor.dynamic_hd == 4
    PHI4.set_image_size(processor, None, 672)
    assert processor.image_processor.dynamic_hd == 2
    with pytest.raises(
        ConfigError, match=r"image_size.size=336: phi4_multimodal cuts images into 448 x 448 crops.*use a size >= 448"
    ):
        PHI4.set_image_size(processor, None, 336)


def test_the_native_models_linear_layers_fall_in_their_parts():
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    from vlmqc.models.phi4_multimodal import TINY_AUDIO

    config = Phi4MultimodalConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        audio_config=TINY_AUDIO,
    )
    with torch.device("meta"):
        model = Phi4MultimodalForCausalLM(config)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            expected = (
                "vision"
                if ".image_embed.img_processor." in name
                else "projector"
                if ".image_embed.img_projection" in name
                else "language"
                if name.startswith("model.layers.")
                else "other"  # the speech encoder and its projections, the output head
            )
            assert PHI4.part(name) == expected, name


def test_the_text_gives_each_image_one_placeholder_in_phis_turns():
    processor = SimpleNamespace(tokenizer=_tokenizer(1024))
    assert PHI4.text(processor, "Q?", 2, None) == "<|user|><|image|><|image|>Q?<|end|><|assistant|>"
    assert PHI4.text(processor, "Q?", 1, "A") == "<|user|><|image|>Q?<|end|><|assistant|>A<|end|>"


def test_the_published_remote_code_layout_is_refused_naming_the_native_conversion(tmp_path, models_dir):
    folder = tmp_path / "phi4mm"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "phi4mm", "auto_map": {"AutoConfig": "configuration_phi4mm.Phi4MMConfig"}})
    )
    cfg = ModelConfig(name="mine", path=str(folder), trust_remote_code=True)
    message = r"model_type phi4mm is the published main branch's remote code.*--revision refs/pr/70"
    with pytest.raises(ConfigError, match=message):
        check(cfg, ImageSizeConfig(name="native"), Layout.stacked)  # at the door, from config.json alone
    with pytest.raises(ConfigError, match=message):
        load(cfg, ImageSizeConfig(name="native"), str(models_dir), "cpu")  # and at load, before transformers is asked


@pytest.mark.skipif(is_torchvision_available(), reason="checks the refusal where torchvision is missing")
def test_without_torchvision_the_family_refuses_saying_so(models_dir):
    with pytest.raises(ConfigError, match="needs torchvision|only with torchvision"):
        load(PHI4.tiny_config(), ImageSizeConfig(name="native"), str(models_dir), "cpu")
    with pytest.raises(ConfigError, match="only with torchvision"):
        PHI4.offline_processor({"crop_size": 448, "patch_size": 14, "dynamic_hd": 36})
    assert not any(models_dir.iterdir())  # nothing half-built left behind


@needs_torchvision
def test_the_tiny_model_is_the_native_port_loaded_without_remote_code(tiny):
    model, processor, family, path = tiny
    assert (
        family is PHI4
        and model.config.model_type == "phi4_multimodal"
        and "auto_map" not in json.loads((Path(path) / "config.json").read_text())
    )
    assert type(model).__name__ == "Phi4MultimodalForCausalLM" and type(model).__module__.startswith(
        "transformers.models.phi4_multimodal"
    )
    assert type(processor).__name__ == "Phi4MultimodalProcessor" and processor.image_processor.dynamic_hd == 4


@needs_torchvision
def test_the_label_mask_learns_the_answer_and_the_end_of_the_turn(tiny):
    model, processor, family, _ = tiny
    prompt = prompt_option("short")
    rows = [pair_row(), pair_row("pass", (448, 800))]  # one crop, and two (800 high): padded to the most crops
    batch = Collator(processor, family, prompt, train=True)(rows)
    assert batch["image_pixel_values"].shape[:2] == (2, 3)  # global view + up to 2 crops
    for i, ex in enumerate(rows):
        learnt = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert processor.tokenizer.decode(learnt) == render_answer(prompt, ex) + "<|end|>"
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert torch.isfinite(model(**batch).loss)


def _crops(h: int, w: int, budget: int) -> int:
    """Phi-4's dynamic HD: ceil(w/448) x ceil(h/448) crops when they fit in the budget, else the grid
    of at most budget crops whose aspect ratio is closest to the image's (ties: the larger grid
    when the image fills over half of it), as the model card's processing code states it."""
    across, down = math.ceil(w / 448), math.ceil(h / 448)
    if across * down <= budget:
        return across * down
    grids = sorted(
        {(i, j) for i in range(1, budget + 1) for j in range(1, budget + 1) if i * j <= budget},
        key=lambda g: g[0] * g[1],
    )
    best, diff = (1, 1), float("inf")
    for i, j in grids:
        d = abs(w / h - i / j)
        if d < diff or (d == diff and w * h > 0.5 * 448 * 448 * i * j):
            best, diff = (i, j), min(d, diff)
    return best[0] * best[1]


@needs_torchvision
@pytest.mark.parametrize("size", [None, 448, 896])
@pytest.mark.parametrize("hw", [(386, 448), (900, 448), (500, 1000), (300, 2000)])
def test_crops_and_image_tokens_are_the_processors(tiny, size, hw):
    model, processor, family, path = tiny
    _, processor, _, _ = load(
        PHI4.tiny_config(), ImageSizeConfig(name=str(size or "native"), size=size), str(Path(path).parent), "cpu"
    )
    budget = {None: 4, 448: 1, 896: 4}[size]  # the tiny processor's dynamic_hd, or size*size // 448**2
    assert processor.image_processor.dynamic_hd == budget
    image = Image.new("RGB", (hw[1], hw[0]))
    batch = family.encode(processor, ["Q?"], [[image]], None, "right")
    facts = family.image_facts(processor, model, [image], batch)
    assert facts.tiles == [_crops(*hw, budget) + 1] and facts.processed_pixels == [[448, 448]]
    assert facts.image_tokens == int(
        processor.image_processor(images=[image], return_tensors="pt")["num_img_tokens"][0]
    )


@needs_torchvision
def test_inspects_table_agrees_with_the_processor_on_the_tiny_model(models_dir, tmp_path):
    cfg = compose_app("preview", ["data=pair_round", "data.train_size=8", "data.test_size=4", "image_size='896'"])
    cfg.paths.output_dir = "."
    objs = validate(cfg)
    objs["model"] = PHI4.tiny_config()
    dsd, _ = get_dataset(objs["data"], tmp_path, num_workers=1, progress=False)
    rows = list(dsd["test"])[:2]
    table, _ = preview(objs, str(models_dir), rows)
    _, processor, _, _ = load(PHI4.tiny_config(), objs["image_size"], str(models_dir), "cpu")
    for row, shown in zip(rows, table, strict=True):
        images = row_images(row, objs["data"].layout)
        out = processor.image_processor(images=images, return_tensors="pt")
        assert shown.facts.input_pixels == [[im.height, im.width] for im in images]
        assert shown.facts.image_tokens == int(out["num_img_tokens"].sum())
        assert shown.facts.tiles == [int(h) // 448 * (int(w) // 448) + 1 for h, w in out["image_sizes"]]
        assert (
            shown.sequence
            == Collator(processor, PHI4, objs["prompt"], True, objs["data"].layout)([row])["input_ids"].shape[1]
        )


@needs_torchvision
def test_the_offline_processor_counts_crops_and_image_tokens_as_the_published_one():
    cfg = to_object(compose_app("train", ["model=phi4_multimodal"]).model, "model")
    processor, config = PHI4.offline_processor(cfg.processor)
    assert processor.image_processor.dynamic_hd == 36 and config.vision_config.crop_size == 448
    image = Image.new("RGB", (896, 448))
    batch = PHI4.encode(processor, ["Q?"], [[image]], None, "right")
    facts = PHI4.image_facts(processor, SimpleNamespace(config=config), [image], batch)
    assert facts.tiles == [3]  # a 2 x 1 grid of 448 crops and the global view
    assert facts.processed_pixels == [[448, 448]]
    # 16 x 16 pooled tokens a crop, each row of the crops' grid and of the global view closed by one more, one separator
    assert facts.image_tokens == 16 * 32 + 16 + 1 + 16 * 16 + 16


@needs_torchvision
def test_the_vision_lora_beside_a_native_checkpoint_is_merged_at_load(tiny, tmp_path, models_dir):
    from peft import LoraConfig, get_peft_model

    folder = tmp_path / "native"
    shutil.copytree(tiny[3], folder)
    name = "model.layers.0.self_attn.qkv_proj"
    base = AutoModelForCausalLM.from_pretrained(folder)
    weight = base.get_submodule(name).weight.detach().clone()
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=[name], init_lora_weights=False))
    lora.save_pretrained(folder / "vision-lora")
    layer = lora.base_model.model.get_submodule(name)
    expected = weight + (8 / 4) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    model = load(ModelConfig(name="mine", path=str(folder)), ImageSizeConfig(name="native"), str(models_dir), "cpu")[0]
    assert torch.allclose(model.get_submodule(name).weight, expected, atol=1e-6)
    assert not torch.allclose(expected, weight)
    assert not any(
        "lora" in n for n, _ in model.named_parameters()
    )  # merged, not an adapter a trial's LoRA would stack on
