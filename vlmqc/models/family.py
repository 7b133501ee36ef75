"""``Family``: what the harness asks of a model family, with the defaults of the chat-template path.

A family module (``vlmqc/models/<family>.py``) subclasses ``Family``, overrides only what its
checkpoints do differently, and is named in ``vlmqc.models.FAMILY_MODULES``; the loader picks it
by the checkpoint's ``model_type``, ``model.random=<name>`` picks its tiny builder. The collator,
``predict`` and ``train`` call these hooks and nothing else that depends on the family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from vlmqc.config import ConfigError, ImageSizeConfig, Layout, ModelConfig

PARTS = ("language", "vision", "projector")


@dataclass
class ImageFacts:
    """What the model really sees of one example's images, in the order they are given."""

    input_pixels: list[list[int]]  # per image, [height, width] as handed to the processor
    processed_pixels: list[list[int]]  # per image, [height, width] the vision tower sees (one tile's, where tiled)
    tiles: list[int]  # per image, tiles or crops (1 where the image is not split)
    image_tokens: int  # image tokens in the sequence, all images together


class Family:
    """A model family. Class attributes describe it; methods are hooks with the default behaviour
    of an ``AutoModelForImageTextToText`` checkpoint whose processor has a chat template."""

    name: ClassVar[str]  # model.random=<name> builds its tiny model; errors name the family by it
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values this family loads
    multi_image: ClassVar[bool] = False  # several images in one user turn (data.layout=separate)
    # packages its processor needs beyond vlmqc's own (Phi-4's image processor exists only with
    # torchvision); its tiny model and offline processor are refused where one is missing
    requires: ClassVar[tuple[str, ...]] = ()
    # trainer.preprocess_pixels=bf16 allowed: the vision tower's first op on pixel_values is a conv
    # that bf16 autocast runs in bf16, so pixels stored in bf16 are the same computation (vlmqc/preprocess.py)
    bf16_pixels: ClassVar[bool] = False
    # module-name regexes of a part, tried in this order (a projector inside the vision tower, like
    # Qwen2-VL's visual.merger, is matched before the tower); no match: "other" (all_linear only)
    parts: ClassVar[dict[str, str]] = {
        "projector": r"projector|merger|connector",
        "vision": r"vision|visual|image_encoder",
        "language": r"language_model|^model\.layers|^layers\.",
    }

    # ---------------------------------------------------------------------------- checks

    def check(self, cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
        """Refuse, with a ConfigError naming the key, what this family cannot do. Called at the door
        (``vlmqc.config.validate``, where the family is known without loading) and again at load."""
        if layout is Layout.separate and not self.multi_image:
            raise ConfigError(
                f"data.layout=separate: the {self.name} family takes one image per prompt, so the pair cannot be "
                f"given as two images; use data.layout=stacked"
            )

    # ---------------------------------------------------------------------------- loading

    def auto_class(self, trust_remote_code: bool) -> type:
        """The transformers auto class the model loads through (remote code: the causal-LM class)."""
        return AutoModelForCausalLM if trust_remote_code else AutoModelForImageTextToText

    def load_processor(self, path: str, trust_remote_code: bool):
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)

    def load_model(self, path: str, trust_remote_code: bool, **kwargs) -> torch.nn.Module:
        return self.auto_class(trust_remote_code).from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)

    def set_image_size(self, processor, model, size: int) -> None:
        """Point the processor's own resolution knobs at ``size`` (image_size.size), or raise a
        ConfigError that says what this family can do instead. Not called for image_size=native."""
        raise ConfigError(
            f"image_size.size={size}: setting the resolution of a {self.name} model is not supported yet; use "
            f"image_size=native"
        )

    # ---------------------------------------------------------------------------- the prompt

    def text(self, processor, instruction: str, images: int, answer: str | None) -> str:
        """One example as text: the images and the instruction in a user turn, then the answer in an
        assistant turn; ``answer=None``: the prompt alone, ending where the answer starts."""
        content = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": instruction}]
        turns = [{"role": "user", "content": content}]
        if answer is not None:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return processor.apply_chat_template(turns, add_generation_prompt=answer is None)

    def encode(
        self, processor, instructions: list[str], images: list[list[Image.Image]], answers: list[str] | None, side: str
    ) -> dict:
        """A padded batch of model inputs (``padding_side=side``). The collator calls it with the
        answers and without; the prompt alone must tokenize to a prefix of prompt + answer (the
        collator checks it, and masks the labels by it). A processor that takes the answer apart
        (PaliGemma's ``suffix``) gets it here; labels it returns are replaced by the collator's."""
        answers_ = answers if answers is not None else [None] * len(instructions)
        texts = [
            self.text(processor, ins, len(imgs), ans)
            for ins, imgs, ans in zip(instructions, images, answers_, strict=True)
        ]
        flat = [im for imgs in images for im in imgs]
        return dict(processor(text=texts, images=flat, return_tensors="pt", padding=True, padding_side=side))

    # ---------------------------------------------------------------------------- facts

    def image_token_id(self, processor, model) -> int | None:
        config_id = getattr(model.config, "image_token_id", None)
        return config_id if config_id is not None else getattr(processor, "image_token_id", None)

    def image_facts(self, processor, model, images: list[Image.Image], batch: dict) -> ImageFacts:
        """The facts of one example (``batch`` is its encoded batch of one). Default: a fixed-size
        tower, ``pixel_values`` one (3, H, W) image per image, image tokens counted by their id."""
        token = self.image_token_id(processor, model)
        pixels = batch["pixel_values"]
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[list(pixels.shape[-2:])] * len(images),
            tiles=[pixels.shape[0] // len(images)] * len(images),
            image_tokens=int((batch["input_ids"] == token).sum()) if token is not None else 0,
        )

    # ---------------------------------------------------------------------------- adapters

    def part(self, name: str) -> str:
        """language, vision, projector or other: which part of the model a module belongs to."""
        for part, pattern in self.parts.items():
            if re.search(pattern, name):
                return part
        return "other"

    # ---------------------------------------------------------------------------- tiny model

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        """The folder name (with its cache key, ``offline.key``) of the model ``build_random`` builds."""
        raise NotImplementedError(f"the {self.name} family has no random builder")

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        """Write a random model of this family into ``path``: small dims from ``cfg.tiny`` (or the
        family's own shape block), a tokenizer with the family's special tokens and format
        (``offline.tokenizer``), its processor, built offline with the PIL image processor."""
        raise NotImplementedError(f"the {self.name} family has no random builder")

    def tiny_config(self) -> ModelConfig:
        """The model config of this family's tiny model, as the tests train it."""
        return ModelConfig(name=f"tiny_{self.name}", random=self.name)

    # ---------------------------------------------------------------------------- what it sees, without weights

    def offline_processor(self, facts: dict):
        """``(processor, model config)`` of a published checkpoint, for ``vlmqc.inspect``: the
        family's processor class built offline from a preset's ``model.processor`` facts (patch and
        merge size, pixel budget, tile size, crops, ...) with the offline tokenizer and the family's
        special tokens, and a transformers config (no weights) carrying what ``set_image_size`` and
        ``image_facts`` read from ``model.config``. Image tokens and pixels are then exactly the
        published processor's; text tokens are the offline tokenizer's count, an estimate."""
        raise NotImplementedError(f"the {self.name} family cannot be inspected offline yet")
