"""The Phi-4-multimodal family (vlmqc/models/phi4_multimodal.py): its preset, the crop budget, LoRA
parts on the native model's module names (built on the meta device: nothing allocated), and its
processor built offline from the preset's facts. Transformers' Phi-4 image processor exists only
with torchvision, so the tests that process images are skipped without it (run on the GPU machine);
the family is not registered for the golden smoke test until its tiny model runs there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import compose_app
from PIL import Image
from transformers.utils import is_torchvision_available

from vlmqc.config import ConfigError, to_object
from vlmqc.models.phi4_multimodal import Phi4Multimodal

PHI4 = Phi4Multimodal()
needs_torchvision = pytest.mark.skipif(not is_torchvision_available(), reason="transformers' Phi-4 image processor exists only with torchvision")


def test_the_preset_names_the_published_remote_code_checkpoint():
    cfg = to_object(compose_app("train", ["model=phi4_multimodal"]).model, "model")
    assert cfg.path == "microsoft/Phi-4-multimodal-instruct" and cfg.family == "phi4_multimodal"
    assert cfg.trust_remote_code  # the published main branch is remote code (model_type phi4mm)
    assert cfg.processor == {"crop_size": 448, "patch_size": 14, "dynamic_hd": 36}
    assert set(PHI4.model_types) == {"phi4mm", "phi4_multimodal"}


def test_image_size_sets_dynamic_hd_a_budget_of_whole_448_crops():
    processor = SimpleNamespace(image_processor=SimpleNamespace(size={"height": 448, "width": 448}, dynamic_hd=36))
    PHI4.set_image_size(processor, None, 896)
    assert processor.image_processor.dynamic_hd == 4
    PHI4.set_image_size(processor, None, 672)
    assert processor.image_processor.dynamic_hd == 2
    with pytest.raises(ConfigError, match=r"image_size.size=336: phi4_multimodal cuts images into 448 x 448 crops.*use a size >= 448"):
        PHI4.set_image_size(processor, None, 336)


def test_the_native_models_linear_layers_fall_in_their_parts():
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

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
        audio_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_blocks": 1,
            "num_attention_heads": 2,
            "ext_pw_out_channel": 32,
            "depthwise_separable_out_channel": 32,
            "nemo_conv_channels": 32,
        },
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


def test_the_text_expands_one_image_token_a_native_image_and_numbers_remote_ones():
    tokenizer = SimpleNamespace(apply_chat_template=lambda turns, **kw: "|".join(t["content"] for t in turns))
    assert PHI4.text(SimpleNamespace(image_token="<|image|>", tokenizer=tokenizer), "Q?", 2, "A") == "<|image|><|image|>Q?|A"
    assert PHI4.text(SimpleNamespace(tokenizer=tokenizer), "Q?", 2, "A") == "<|image_1|><|image_2|>Q?|A"


@needs_torchvision
def test_the_offline_processor_counts_crops_and_image_tokens_as_the_processor_does():
    cfg = to_object(compose_app("train", ["model=phi4_multimodal"]).model, "model")
    processor, config = PHI4.offline_processor(cfg.processor)
    image = Image.new("RGB", (896, 448))
    text = PHI4.text(processor, "Q?", 1, None)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    facts = PHI4.image_facts(processor, SimpleNamespace(config=config), [image], batch)
    assert facts.tiles == [3]  # a 2 x 1 grid of 448 crops and the global view
    assert facts.processed_pixels == [[448, 448]]
    assert facts.image_tokens == int(processor.image_processor(images=[image], return_tensors="pt")["num_img_tokens"][0])
