"""Phi-3-vision and Phi-3.5-vision (``model_type: phi3_v``), the study's own family: remote code
(the checkpoint ships its modeling and processing files; ``trust_remote_code: true``), loaded
through ``AutoModelForCausalLM``; a CLIP tower on 336-pixel crops (HD: up to ``num_crops`` crops
of the resized image, plus one global view), 144 tokens per crop after 2 x 2 merging, a Phi-3
language model; numbered image placeholders ``<|image_1|>``, ``<|image_2|>``, ... in the prompt;
several images per turn (Phi-3.5).

``image_size=S`` is a crop budget: ``S x S`` pixels hold ``S*S // 336**2`` crops, which becomes
the processor's ``num_crops``; a size smaller than one crop is refused, and so is any size for a
processor without ``num_crops``.

The published processor takes one prompt a call, so a batch is encoded example by example and
padded here. Its tiny model (``model.random=phi3_v``) is remote code too: ``build_random`` writes
a LLaVA under Phi's model type with the files in ``phi3_v_remote/`` and an ``auto_map`` to them,
so loading it runs them through ``trust_remote_code`` for real.

``offline_processor`` (``vlmqc.inspect`` on the ``phi3_5_vision`` preset) is the published processor's
crop and token rules, rebuilt in ``phi3_v_processor.py``: the published one is remote code on the hub.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig
from vlmqc.models import llava, offline
from vlmqc.models.family import Family, ImageFacts

CROP = 336  # the side of an HD crop of the published Phi3VImageProcessor (its CLIP ViT-L/14-336 tower)
REMOTE = Path(__file__).parent / "phi3_v_remote"
REMOTE_FILES = ("configuration_phi3_v.py", "modeling_phi3_v.py", "processing_phi3_v.py")
# the tiny model's tokenizer: Phi-3's turn tokens, and the <image> token its LLaVA expands
TOKENS = ["<|endoftext|>", "<s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<image>"]
# Phi-3(.5)-vision's turn format: every turn '<|role|>\n' + content + '<|end|>\n', content a string
# holding the numbered placeholders. The assistant header is fixed, so the prompt alone tokenizes to
# a prefix of prompt + answer.
TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _pad(rows: list[torch.Tensor], value: int, side: str) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.stack(
        [F.pad(r, (width - len(r), 0) if side == "left" else (0, width - len(r)), value=value) for r in rows]
    )


def _cat_images(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Image tensors of several calls, one after the other; HD crops (dim 1 of a 5-d tensor) padded
    with zeros to the most crops, as the published processor pads them within one call."""
    if tensors[0].dim() == 5:
        most = max(t.shape[1] for t in tensors)
        tensors = [F.pad(t, (0, 0, 0, 0, 0, 0, 0, most - t.shape[1])) for t in tensors]
    return torch.cat(tensors)


class Phi3V(Family):
    name = "phi3_v"
    model_types = ("phi3_v",)
    multi_image = True  # Phi-3.5-vision takes several images (multi-frame); Phi-3-vision was trained on one
    # the published modeling_phi3_v.py: model.vision_embed_tokens.{img_processor (CLIP), img_projection},
    # model.layers (Phi-3); the tiny remote-code model is a LLaVA: vision_tower, multi_modal_projector, language_model
    parts = {
        "projector": r"img_projection|multi_modal_projector",
        "vision": r"img_processor|vision_tower",
        "language": r"^model\.layers\.|language_model",
    }

    def check(self, cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
        super().check(cfg, image_size, layout)
        if not cfg.trust_remote_code:
            raise ConfigError(
                f"model.trust_remote_code=false: a {self.name} checkpoint (Phi-3/3.5-vision) runs its own "
                f"modeling and processing code, "
                "which transformers loads only with model.trust_remote_code=true; model=phi3_5_vision sets it"
            )

    def set_image_size(self, processor, model, size: int) -> None:
        ip = processor.image_processor
        if not hasattr(ip, "num_crops"):
            raise ConfigError(
                f"image_size.size={size}: this {self.name} processor ({type(ip).__name__}) has no num_crops (HD "
                f"crops) to set; use image_size=native"
            )
        crops = size * size // (CROP * CROP)
        if crops < 1:
            raise ConfigError(
                f"image_size.size={size}: phi3_v cuts images into {CROP} x {CROP} crops and image_size is a "
                f"budget of size x size pixels in whole crops (num_crops); "
                f"use a size >= {CROP} (one crop; {2 * CROP} holds 4)"
            )
        ip.num_crops = crops

    def text(self, processor, instruction: str, images: int, answer: str | None) -> str:
        placeholders = "".join(f"<|image_{i}|>\n" for i in range(1, images + 1))
        turns = [{"role": "user", "content": placeholders + instruction}]
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        return processor.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=answer is None)

    def encode(self, processor, instructions, images, answers, side: str) -> dict:
        # the published Phi3VProcessor takes one prompt a call: encode each, then pad and join here
        answers_ = answers if answers is not None else [None] * len(instructions)
        parts = [
            processor(text=self.text(processor, ins, len(imgs), ans), images=imgs, return_tensors="pt")
            for ins, imgs, ans in zip(instructions, images, answers_, strict=True)
        ]
        pad = processor.tokenizer.pad_token_id
        batch = {
            "input_ids": _pad([p["input_ids"][0] for p in parts], pad, side),
            "attention_mask": _pad([p["attention_mask"][0] for p in parts], 0, side),
        }
        for key in parts[0].keys() - batch.keys():
            batch[key] = _cat_images([p[key] for p in parts])
        return batch

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        pixels = batch["pixel_values"]
        if pixels.dim() == 4:  # one view an image (the tiny model): the default's facts
            return super().image_facts(processor, model, images, batch)
        # the published processor: (images, crops + 1 global view, 3, 336, 336), padded to the most
        # crops; image_sizes is each image's HD size, whose 336-pixel grid is its real crops.
        # Its image tokens are negative ids (-1 for <|image_1|>, ...).
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[list(pixels.shape[-2:])] * len(images),
            tiles=[(int(h) // CROP) * (int(w) // CROP) + 1 for h, w in batch["image_sizes"]],
            image_tokens=int((batch["input_ids"] < 0).sum()),
        )

    def tiny_config(self) -> ModelConfig:
        return ModelConfig(name=f"tiny_{self.name}", random=self.name, trust_remote_code=True)

    def offline_processor(self, facts: dict):
        """Facts (conf/model/phi3_5_vision.yaml): ``crop_size`` (336), ``num_crops``, ``num_img_tokens``
        (144 a crop). The published remote-code processor's rules, rebuilt in phi3_v_processor.py; the
        config is a bare one: this family's facts read nothing from it."""
        from transformers import PretrainedConfig

        from vlmqc.models import phi3_v_processor as published

        if (facts["crop_size"], facts["num_img_tokens"]) != (published.CROP, published.TOKENS_PER_CROP):
            raise ConfigError(
                f"model.processor: the published Phi-3-vision processor has {published.CROP}-pixel crops of "
                f"{published.TOKENS_PER_CROP} tokens, "
                f"not {facts['crop_size']} and {facts['num_img_tokens']}"
            )
        processor = published.Phi3VProcessor(published.Phi3VImageProcessor(facts["num_crops"]), _published_tokenizer())
        return processor, PretrainedConfig()

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        size = size or cfg.tiny.native_size
        code = {f: (REMOTE / f).read_text() for f in REMOTE_FILES}
        spec = {"tiny": asdict(cfg.tiny), "size": size, "template": TEMPLATE, "code": code}
        return f"phi3_v-random-{size}px-{offline.key(spec)}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import LlavaForConditionalGeneration, LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        t = cfg.tiny
        size = size or t.native_size
        tokenizer = offline.tokenizer(
            t.vocab_size,
            TOKENS,
            bos_token="<s>",
            eos_token="<|end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens={"image_token": "<image>"},
        )
        tokenizer.chat_template = TEMPLATE
        image_processor = CLIPImageProcessorPil(
            size={"height": size, "width": size}, do_center_crop=False, crop_size={"height": size, "width": size}
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=t.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            image_token="<image>",
        )
        config = llava.tiny_config(t, size, tokenizer)
        model = offline.random_model(LlavaForConditionalGeneration, config, t.seed, tokenizer)
        # saved under Phi's model type, so the weights keep the names the remote class loads (a
        # llava model type would save them in LLaVA's legacy layout, which only llava maps back)
        model.config.model_type = "phi3_v"
        model.save_pretrained(path)
        processor.save_pretrained(path)
        # the remote code, and config files that point at it instead of transformers' own classes
        for f in REMOTE_FILES:
            shutil.copy(REMOTE / f, path / f)
        _edit_json(
            path / "config.json",
            model_type="phi3_v",  # config.json takes the class's model type, not the instance's
            architectures=["Phi3VForCausalLM"],
            auto_map={
                "AutoConfig": "configuration_phi3_v.Phi3VConfig",
                "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
            },
        )
        for name in ("processor_config.json", "preprocessor_config.json"):
            if (path / name).exists():
                _edit_json(
                    path / name,
                    processor_class="Phi3VProcessor",
                    auto_map={"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
                )


def _edit_json(file: Path, **values) -> None:
    file.write_text(json.dumps({**json.loads(file.read_text()), **values}, indent=2))


def _published_tokenizer():
    tokenizer = offline.tokenizer(1024, TOKENS, bos_token="<s>", eos_token="<|end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer
