"""Gemma 3: a SigLIP tower of one fixed resolution (896 in the published checkpoints), pooled into
256 image tokens per view, a Gemma 3 language model (sliding-window and full attention layers);
several images per turn, and pan-and-scan crops for images far from square.

Every image is one view resized to the tower's square; with pan-and-scan on, an image whose aspect
ratio exceeds ``pan_and_scan_min_ratio_to_activate`` is also cut into 2 to
``pan_and_scan_max_num_crops`` crops along its long side (each at least
``pan_and_scan_min_crop_size`` pixels), each one more view of the same image tokens. Gemma3Processor
passes its own pan-and-scan defaults (off) at every call, over the image processor's settings; so
``encode`` hands the image processor's settings (the checkpoint's, or ``set_image_size``'s) to the
call, which is where they take effect.

``image_size``: the tower size T (896) is pan-and-scan off, one T x T view per image; k x T
(k >= 2) is pan-and-scan on with at most k crops, so the long side is seen at up to k x T pixels.
Any other size is refused.

Its tiny model (``model.random=gemma3``) is a real Gemma 3 with random weights, the offline
tokenizer with Gemma's turn and image tokens, and Gemma's chat format.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from vlmqc.config import ConfigError, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

BOI, EOI, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
TOKENS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, IMAGE_TOKEN]
# Gemma 3's chat format, images only: the assistant's turn is "model"; an image is its
# <start_of_image>, which the processor expands into the view's image tokens. The model turn starts
# with a fixed header, so the prompt alone always tokenizes to a prefix of prompt + answer.
TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<start_of_image>' }}{% else %}{{ c['text'] | "
    "trim }}{% endif %}{% endfor %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
PAN_AND_SCAN = (
    "do_pan_and_scan",
    "pan_and_scan_min_crop_size",
    "pan_and_scan_max_num_crops",
    "pan_and_scan_min_ratio_to_activate",
)
# Gemma3Processor's own defaults, used where the image processor leaves a setting unset (null)
PAN_AND_SCAN_DEFAULTS = {
    "do_pan_and_scan": False,
    "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}


def pan_and_scan(image_processor) -> dict:
    """The pan-and-scan settings a call uses: the image processor's, the processor's defaults where unset."""
    return {
        k: v if (v := getattr(image_processor, k, None)) is not None else PAN_AND_SCAN_DEFAULTS[k] for k in PAN_AND_SCAN
    }


def _tokenizer(vocab_size: int):
    tokenizer = offline.tokenizer(
        vocab_size,
        TOKENS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI, "eoi_token": EOI},
    )
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _processor(tokenizer, size: int, image_seq_length: int, **published):
    # PIL processor: no torchvision needed
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    image_processor = Gemma3ImageProcessorPil(size={"height": size, "width": size}, **published)
    return Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=TEMPLATE, image_seq_length=image_seq_length
    )


class Gemma3(Family):
    name = "gemma3"
    model_types = ("gemma3",)
    multi_image = True
    # the projector (multi_modal_projector) holds a weight matrix, not a linear layer: LoRA finds none there
    parts = {"projector": r"multi_modal_projector", "vision": r"vision_tower", "language": r"language_model"}

    def set_image_size(self, processor, model, size: int) -> None:
        tower = model.config.vision_config.image_size
        ip = processor.image_processor
        if size == tower:
            ip.do_pan_and_scan = False
        elif size % tower == 0:
            ip.do_pan_and_scan = True
            ip.pan_and_scan_max_num_crops = size // tower
        else:
            raise ConfigError(
                f"image_size.size={size}: gemma3 sees every image (and every pan-and-scan crop) at its vision "
                f"tower's fixed {tower} x {tower} pixels; "
                f"use image_size=native (the checkpoint's processor settings), {tower} (one view, pan-and-scan "
                f"off) or a multiple k x {tower} "
                f"(pan-and-scan, at most k crops: {2 * tower}, {3 * tower}, ...)"
            )

    def encode(self, processor, instructions, images, answers, side) -> dict:
        answers_ = answers if answers is not None else [None] * len(instructions)
        texts = [
            self.text(processor, ins, len(imgs), ans)
            for ins, imgs, ans in zip(instructions, images, answers_, strict=True)
        ]
        kwargs = pan_and_scan(processor.image_processor)
        # images nested per prompt: the processor matches them to each prompt's <start_of_image>
        return dict(
            processor(
                text=texts,
                images=[list(imgs) for imgs in images],
                return_tensors="pt",
                padding=True,
                padding_side=side,
                **kwargs,
            )
        )

    def image_facts(self, processor, model, images, batch) -> ImageFacts:
        # the crops of each image, as the image processor cuts them with the settings encode used
        crops = [
            int(n) for n in processor.image_processor(images, **pan_and_scan(processor.image_processor))["num_crops"]
        ]
        views = batch["pixel_values"].shape[0]
        if views != sum(1 + n for n in crops):
            raise ValueError(
                f"{views} views in the batch, but the image processor cuts these images into {crops} crops (plus "
                f"one whole view each)"
            )
        return ImageFacts(
            input_pixels=[[im.height, im.width] for im in images],
            processed_pixels=[list(batch["pixel_values"].shape[-2:])] * len(images),
            tiles=[1 + n for n in crops],
            image_tokens=int((batch["input_ids"] == model.config.image_token_id).sum()),
        )

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        # one model for every image_size: the tower is fixed, image_size picks pan-and-scan
        return f"gemma3-random-{offline.key({'family': self.name, 'tiny': asdict(cfg.tiny), 'template': TEMPLATE})}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration

        t = cfg.tiny
        tokenizer = _tokenizer(t.vocab_size)
        patches = t.native_size // t.patch_size
        side = (
            patches // 2 if patches % 2 == 0 else patches
        )  # image tokens per side: patches pooled 2 x 2 where they can be
        processor = _processor(tokenizer, t.native_size, side * side, **PAN_AND_SCAN_DEFAULTS)
        head_dim = t.text_hidden // offline.text_shape(t)["num_attention_heads"]
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in TOKENS}
        config = Gemma3Config(
            vision_config=offline.vision_shape(
                t,
                model_type="siglip_vision_model",
                image_size=t.native_size,
                patch_size=t.patch_size,
                vision_use_head=False,
                initializer_range=None,
            ),
            text_config=offline.text_shape(
                t,
                vocab_size=len(tokenizer),
                max_position_embeddings=None,
                head_dim=head_dim,
                query_pre_attn_scalar=head_dim,
                sliding_window=64,  # shorter than a tiny sequence: the sliding layers really slide
                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(t.text_layers)],
                pad_token_id=ids["<pad>"],
                bos_token_id=ids["<bos>"],
                eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
            ),
            mm_tokens_per_image=side * side,
            boi_token_index=ids[BOI],
            eoi_token_index=ids[EOI],
            image_token_index=ids[IMAGE_TOKEN],
            initializer_range=t.init_std,
        )
        torch.manual_seed(t.seed)
        model = Gemma3ForConditionalGeneration(config)
        model.generation_config.pad_token_id = ids["<pad>"]
        model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
        model.save_pretrained(path)
        processor.save_pretrained(path)

    def offline_processor(self, facts: dict):
        from transformers import Gemma3Config

        tokenizer = _tokenizer(1024)
        published = {
            k: facts[k] for k in ("image_mean", "image_std", "resample", *PAN_AND_SCAN) if facts.get(k) is not None
        }
        processor = _processor(tokenizer, facts["image_size"], facts["image_seq_length"], **published)
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in TOKENS}
        config = Gemma3Config(
            vision_config={
                "model_type": "siglip_vision_model",
                "image_size": facts["image_size"],
                "patch_size": facts["patch_size"],
            },
            mm_tokens_per_image=facts["image_seq_length"],
            boi_token_index=ids[BOI],
            eoi_token_index=ids[EOI],
            image_token_index=ids[IMAGE_TOKEN],
        )
        return processor, config
