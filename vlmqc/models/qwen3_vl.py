"""Qwen3-VL: Qwen2-VL's pixel budget and 2 x 2 merge with 16-pixel patches (32 x 32 pixels an image
token), a vision tower with learnt position embeddings whose intermediate features (DeepStack) are
merged and added into the first language-model layers, several images per turn.

Only what differs from Qwen2.5-VL (qwen2_5_vl.py, whose tiny builder it shares) is here: the model
and processor classes, the chat format (no default system turn), the tower's shape and LoRA parts.
Its tiny model (``model.random=qwen3_vl``) takes its sizes from ``model.tiny``.
"""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLProcessor

from vlmqc.config import ModelConfig
from vlmqc.models import offline
from vlmqc.models.qwen2_5_vl import Qwen2_5_VL
from vlmqc.models.qwen2_vl import token_ids

# Qwen3-VL's chat format, images only: a system turn only when one is given (none here)
TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ "
    "'<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _ImagesOnlyProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without its video processor, which transformers builds only with torchvision
    (the attributes are read from this signature; images and text behave as in the full class)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VL(Qwen2_5_VL):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    # the DeepStack mergers project the tower's intermediate features into the language model, like the merger
    parts = {
        "projector": r"visual\.(merger|deepstack_merger_list)",
        "vision": r"visual\.",
        "language": r"language_model",
    }
    config_class = Qwen3VLConfig
    images_only = _ImagesOnlyProcessor
    template = TEMPLATE
    patch_size, merge_size = 16, 2  # the published checkpoints' (preprocessor_config.json)
    tiny_min_pixels = 64 * 64  # the published floor (256 x 256) is above a tiny model's whole budget

    def random_config(self, cfg: ModelConfig, tok):
        t = cfg.tiny
        return Qwen3VLConfig(
            text_config=offline.text_shape(
                t,
                tok,
                vocab_size=t.vocab_size,
                bos_token_id=tok.pad_token_id,
                head_dim=16,
                # interleaved multimodal rotary frequencies, as published; sums to head_dim / 2
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 5e6,
                    "mrope_section": [2, 3, 3],
                    "mrope_interleaved": True,
                },
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
                "num_position_embeddings": 256,  # a 16 x 16 grid of learnt positions, interpolated to each image's
                # DeepStack: the first block's features go into the first language layer (the 2B: blocks 5, 11, 17)
                "deepstack_visual_indexes": [0],
                "initializer_range": t.init_std,
            },
            tie_word_embeddings=True,
            **token_ids(tok),
        )
