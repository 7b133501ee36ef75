"""PaliGemma (1 and 2): a SigLIP tower of one fixed resolution (224, 448 or 896: one checkpoint
each), a linear projector, a Gemma (2) language model; no chat template.

The prompt is a prefix (``text=``, the instruction) and the answer a suffix (``suffix=``): the
processor writes ``<image>... <bos>instruction\\n`` + ``answer<eos>``, with ``token_type_ids`` 0 on
the prefix (which attends bidirectionally) and 1 on the suffix (causal). Prefix and suffix are
tokenized apart, so the prompt alone is a prefix of prompt + answer and the collator's own
answer-only mask equals the processor's labels. One image per prompt.

Its tiny model (``model.random=paligemma``) is a real PaliGemma 2 (Gemma 2 text model, sliding
and full attention layers) with random weights and the offline tokenizer: built once per
resolution, since a SigLIP tower is built for one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from vlmqc.config import ConfigError, ModelConfig
from vlmqc.models import offline
from vlmqc.models.family import Family

IMAGE_TOKEN = "<image>"
TOKENS = ["<pad>", "<eos>", "<bos>", IMAGE_TOKEN]  # Gemma's ids 0, 1, 2, as the published tokenizer


def _tokenizer(vocab_size: int):
    return offline.tokenizer(
        vocab_size,
        TOKENS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _image_processor(size: int, image_seq_length: int, **published):
    # PIL processor: no torchvision needed; the whole image is resized to the tower's square
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": size, "width": size}, image_seq_length=image_seq_length, **published)


class PaliGemma(Family):
    name = "paligemma"
    model_types = ("paligemma",)
    multi_image = False  # one image per prefix, as PaliGemma was trained
    parts = {"projector": r"multi_modal_projector", "vision": r"vision_tower", "language": r"language_model"}

    def set_image_size(self, processor, model, size: int) -> None:
        native = model.config.vision_config.image_size
        if native != size:
            raise ConfigError(
                f"image_size.size={size}: this paligemma checkpoint's vision tower was built for {native} x "
                f"{native} pixels (a fixed size; "
                f"PaliGemma publishes one checkpoint per size: 224, 448, 896); use image_size=native or {native}, "
                f"or a checkpoint built for {size}"
            )
        processor.image_processor.size = {"height": size, "width": size}

    def text(self, processor, instruction: str, images: int, answer: str | None) -> str:
        """The prefix the processor takes as ``text=``: the image placeholders and the instruction.
        The answer is not written into it: ``encode`` hands it to the processor as ``suffix=``."""
        if answer is not None:
            raise ValueError("a paligemma answer is the processor's suffix (encode), not part of the prefix text")
        return IMAGE_TOKEN * images + instruction

    def encode(self, processor, instructions, images, answers, side) -> dict:
        texts = [self.text(processor, ins, len(imgs), None) for ins, imgs in zip(instructions, images, strict=True)]
        flat = [im for imgs in images for im in imgs]
        suffix = {"suffix": list(answers)} if answers is not None else {}
        batch = dict(processor(text=texts, images=flat, return_tensors="pt", padding=True, padding_side=side, **suffix))
        # the processor's labels are the collator's (a test checks it); token_type_ids stay: the
        # model builds its prefix-bidirectional mask from them, in training and in generation
        batch.pop("labels", None)
        return batch

    def random_folder(self, cfg: ModelConfig, size: int | None) -> str:
        size = size or cfg.tiny.native_size
        return f"paligemma-{size}px-{offline.key({'family': self.name, 'tiny': asdict(cfg.tiny), 'size': size})}"

    def build_random(self, cfg: ModelConfig, size: int | None, path: Path) -> None:
        from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

        t = cfg.tiny
        size = size or t.native_size
        if size % t.patch_size:
            raise ConfigError(
                f"image_size.size={size}: the tiny paligemma's tower needs a multiple of its patch size "
                f"({t.patch_size})"
            )
        tokenizer = _tokenizer(t.vocab_size)
        processor = PaliGemmaProcessor(
            image_processor=_image_processor(size, (size // t.patch_size) ** 2), tokenizer=tokenizer
        )
        head_dim = t.text_hidden // offline.text_shape(t)["num_attention_heads"]
        config = PaliGemmaConfig(
            vision_config=offline.vision_shape(
                t,
                model_type="siglip_vision_model",
                image_size=size,
                patch_size=t.patch_size,
                vision_use_head=False,
                initializer_range=None,
            ),
            # PaliGemma 2: a Gemma 2 text model, sliding-window and full attention layers; the
            # vocabulary with the processor's <loc>/<seg> tokens
            text_config=offline.text_shape(
                t,
                tokenizer,
                model_type="gemma2",
                max_position_embeddings=None,
                head_dim=head_dim,
                query_pre_attn_scalar=head_dim,
                sliding_window=128,
                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(t.text_layers)],
            ),
            image_token_index=tokenizer.image_token_id,
            projection_dim=t.text_hidden,
            hidden_size=t.text_hidden,
            vocab_size=len(tokenizer),
        )
        config.initializer_range = t.init_std
        model = offline.random_model(PaliGemmaForConditionalGeneration, config, t.seed, tokenizer)
        model.save_pretrained(path)
        processor.save_pretrained(path)

    def offline_processor(self, facts: dict):
        from transformers import PaliGemmaConfig, PaliGemmaProcessor

        size, patch = facts["image_size"], facts["patch_size"]
        published = {k: facts[k] for k in ("image_mean", "image_std", "resample") if k in facts}
        tokenizer = _tokenizer(1024)
        processor = PaliGemmaProcessor(
            image_processor=_image_processor(size, facts["image_seq_length"], **published), tokenizer=tokenizer
        )
        config = PaliGemmaConfig(
            vision_config={"model_type": "siglip_vision_model", "image_size": size, "patch_size": patch},
            text_config={"model_type": "gemma2"},
            image_token_index=tokenizer.image_token_id,
        )
        return processor, config
