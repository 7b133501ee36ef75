"""Qwen2.5-VL: Qwen2-VL's pixel budget, 14-pixel patches and 2 x 2 merge, a vision tower with window
attention (full attention in a few blocks only) and an RMSNorm / SwiGLU tower, several images per turn.

Only what differs from Qwen2-VL (qwen2_vl.py) is here: the model and processor classes and the tiny
builder. Its tiny model (``model.random=qwen2_5_vl``) takes its sizes from ``model.tiny``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen2_5_VLProcessor

from vlmqc.config import ModelConfig
from vlmqc.models import offline
from vlmqc.models.qwen2_vl import TEMPLATE, Qwen2VL, save, token_ids, tokenizer


class _ImagesOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without its video processor, which transformers builds only with torchvision
    (the attributes are read from this signature; images and text behave as in the full class)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VL(Qwen2VL):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    config_class = Qwen2_5_VLConfig
    images_only = _ImagesOnlyProcessor
    template = TEMPLATE  # Qwen2.5-VL's chat format is Qwen2-VL's (a default system turn)
    patch_size, merge_size = 14, 2  # the published checkpoints' (preprocessor_config.json)
    # the tiny model's floor: images are scaled into [tiny_min_pixels, tiny.native_size^2] pixels
    tiny_min_pixels = 56 * 56

    def random_min_pixels(self, cfg: ModelConfig) -> tuple[str, int]:
        return "its min_pixels", self.tiny_min_pixels

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every resolution: the budget is the processor's
        spec = {"family": self.name, "tiny": asdict(cfg.tiny), "template": self.template}
        return f"{self.name}-random-{offline.key(spec)}"

    def random_config(self, cfg: ModelConfig, tok):
        """The transformers config of the tiny model, ``cfg.tiny``'s sizes, ``tok``'s token ids."""
        t = cfg.tiny
        window_layers = max(
            1, t.vision_layers - 1
        )  # window attention in all blocks but the last, as the real tower mixes both
        return Qwen2_5_VLConfig(
            text_config=offline.text_shape(
                t,
                tok,
                vocab_size=t.vocab_size,
                bos_token_id=tok.pad_token_id,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1e6,
                    "mrope_section": [2, 3, 3],
                },  # sums to head size / 2 (16 / 2)
            ),
            vision_config={
                "depth": t.vision_layers,
                "hidden_size": t.vision_hidden,
                "intermediate_size": 2 * t.vision_hidden,
                "num_heads": max(1, t.vision_hidden // 16),
                "out_hidden_size": t.text_hidden,
                "patch_size": self.patch_size,
                "spatial_merge_size": self.merge_size,
                "temporal_patch_size": 2,
                "window_size": 4
                * self.patch_size
                * self.merge_size,  # 4 x 4 image tokens a window: a 224 x 224 image is 2 x 2 windows
                "fullatt_block_indexes": list(range(window_layers, t.vision_layers)),
                "initializer_range": t.init_std,
            },
            tie_word_embeddings=True,
            **token_ids(tok),
        )

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        t = cfg.tiny
        tok = tokenizer(t.vocab_size, self.template)
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": self.tiny_min_pixels, "longest_edge": t.native_size * t.native_size},
            patch_size=self.patch_size,
            temporal_patch_size=2,
            merge_size=self.merge_size,
        )
        torch.manual_seed(t.seed)
        save(
            path,
            AutoModelForImageTextToText.from_config(self.random_config(cfg, tok)),
            tok,
            image_processor,
            self.template,
        )
