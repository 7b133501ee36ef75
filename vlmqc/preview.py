"""What the model sees, before any training: pixels, tiles, tokens and activation memory.

    vlmqc preview model=tiny data=star                          # every image_size option
    vlmqc preview model=qwen2_vl_2b_random data=pair_round image_size=448 examples=5
    vlmqc preview model=<preset> data=star trainer.batch_size=4 trainer.precision=bf16

For the first ``examples`` test examples of the data and each image_size option (or the one
given), one row: input pixels, processed pixels (one tile's, where tiled), tiles or crops, image
tokens, text tokens, sequence length (prompt + answer, as the collator builds a training example),
and the estimated activation memory per sample and per batch of ``trainer.batch_size``.

The processor is the one a trial would use, set by the family's ``set_image_size``; the numbers
are the family's ``image_facts``, which every trial also records in its summary (``facts``):
  - ``model.path=<folder>``: the checkpoint's own processor (``family.load_processor``);
  - ``model.random=<family>`` (``model=tiny``, ``model=qwen2_vl_2b_random``): the built folder;
  - a preset naming a published checkpoint that is not on disk: the family's processor class built
    offline from the preset's ``model.processor`` facts (``family.offline_processor``). Pixels,
    tiles and image tokens are then the published processor's; text tokens are counted with the
    small offline tokenizer, an estimate (the real tokenizer's count differs by a few tokens).

Activation memory is an ESTIMATE of what the forward pass keeps for backward, per sample::

    bytes = L * s * (8 h + 4 i) * b                      language model: L layers, s tokens, hidden
                                                         h, MLP width i (SwiGLU); memory-efficient
                                                         attention, so no s x s scores
          + s * V * (b + 4)                              logits and the fp32 log-softmax of the loss
          + Lv * n * (8 hv + 2 iv) * b                   vision tower (n patches, Lv layers, hidden hv,
                                                         MLP iv), only where it trains (lora.target
                                                         language_vision / all_linear, or full
                                                         fine-tuning with lora.train_vision)

b is 4 bytes in fp32 and 2 in bf16/fp16 (``trainer.precision``; auto as a trial resolves it on this
machine). 8 h + 4 i counts per token the block's saved tensors: two norms' inputs and outputs, q, k,
v and the attention output, and the MLP's gate, up, activation and product (after Korthikanti et
al. 2022, "Reducing activation recomputation", adapted). Not counted: weights, gradients, optimizer
state, LoRA dropout's copies of adapter inputs, padding to the longest sample of a batch (per batch
is per sample times the batch size), gradient checkpointing (which keeps about one layer's worth).
Checked once against the saved tensors measured on the tiny LLaVA (tests/test_preview.py): 1.12x,
on a model whose logits are half the total; not checked against a real checkpoint's GPU peak.
Exit status: 0, or 2 on a config error (named on stderr), before any dataset is built.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace

from omegaconf import OmegaConf
from transformers import AutoConfig

from vlmqc import models
from vlmqc.collate import Collator
from vlmqc.config import CONF_DIR, ConfigError, ImageSizeConfig, LoraTarget, Precision
from vlmqc.data.layout import images as row_images
from vlmqc.devices import pick_device, resolve_precision
from vlmqc.models import offline
from vlmqc.models.family import ImageFacts

log = logging.getLogger(__name__)

BYTES = {Precision.fp32: 4, Precision.bf16: 2, Precision.fp16: 2}


@dataclass
class Row:
    size: str  # the image_size option
    example: str
    facts: ImageFacts | None
    sequence: int = 0
    activation_bytes: int | None = 0  # None: the model's shapes are not known (an offline preset without text_config)
    note: str = ""  # why a size cannot be shown


def image_size_options() -> list[ImageSizeConfig]:
    """Every option of conf/image_size, native first, then by size."""
    options = []
    for path in (CONF_DIR / "image_size").glob("*.yaml"):
        node = OmegaConf.load(path)
        options.append(ImageSizeConfig(name=str(node.name), size=node.get("size")))
    return sorted(options, key=lambda o: (o.size is not None, o.size or 0))


def source(model_cfg, size: ImageSizeConfig, models_dir: str, scratch: str | None = None):
    """(family, processor, transformers config, where they came from) for one image size, the
    processor set to it as a trial sets it (a ConfigError where the family cannot).

    A random model (``model.random``) already built in ``models_dir`` is read from there; one that
    is not is built without weights (``offline.weightless``: its config and processor) into
    ``scratch``, a temporary folder (a new one when not given): nothing the size of a model is
    written to the cache."""
    if model_cfg.path is None or os.path.isdir(model_cfg.path):
        path = model_cfg.path
        if path is None:
            family = models.families()[model_cfg.random]
            path = os.path.join(os.path.expanduser(models_dir), family.random_folder(model_cfg, size.size))
            if not os.path.isfile(os.path.join(path, "config.json")):
                scratch = scratch or tempfile.mkdtemp(prefix="vlmqc-inspect-")
                path = os.path.join(scratch, family.random_folder(model_cfg, size.size))
                if not os.path.isfile(os.path.join(path, "config.json")):
                    with offline.weightless():
                        models.random_checkpoint(model_cfg, size.size, scratch)
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        family = models.family_for(config.model_type)
        processor = family.load_processor(path, model_cfg.trust_remote_code)
        origin = (
            path
            if model_cfg.path is not None or path.startswith(os.path.expanduser(models_dir))
            else f"the {family.name} random model's config and processor, built without weights"
        )
    else:
        family = models.families()[model_cfg.family]
        processor, config = family.offline_processor(model_cfg.processor)
        origin = (
            f"{model_cfg.path}: its processor built offline from model.processor (text tokens: offline "
            f"tokenizer, an estimate)"
        )
    if size.size is not None:
        family.set_image_size(processor, SimpleNamespace(config=config), size.size)
    return family, processor, config, origin


def _vision_shape(v) -> tuple[int, int, int]:
    """Layers, hidden and MLP width of a vision tower config (CLIP/SigLIP names or Qwen's)."""
    layers = getattr(v, "depth", None) or v.num_hidden_layers
    hidden = getattr(v, "embed_dim", None) or v.hidden_size
    mlp = getattr(v, "intermediate_size", None) or int(hidden * v.mlp_ratio)
    return layers, hidden, mlp


def activation_bytes(config, facts: ImageFacts, sequence: int, bytes_per_value: int, vision_trains: bool) -> int:
    """The module docstring's estimate of one sample's activations kept for backward."""
    t = config.get_text_config()
    total = t.num_hidden_layers * sequence * (8 * t.hidden_size + 4 * t.intermediate_size) * bytes_per_value
    total += sequence * t.vocab_size * (bytes_per_value + 4)
    if vision_trains:
        v = config.vision_config
        layers, hidden, mlp = _vision_shape(v)
        patch = v.patch_size
        patches = sum(
            n * (h // patch) * (w // patch) for n, (h, w) in zip(facts.tiles, facts.processed_pixels, strict=True)
        )
        total += layers * patches * (8 * hidden + 2 * mlp) * bytes_per_value
    return total


def precision_bytes(precision: Precision, device: str) -> tuple[Precision, int]:
    # as a trial resolves trainer.precision=auto on this machine (vlmqc/devices.py)
    precision = resolve_precision(precision, pick_device(device) if device != "cpu" else "cpu")
    return precision, BYTES[precision]


def preview(objs: dict, models_dir: str, rows_data: list[dict]) -> tuple[list[Row], list[str]]:
    """The table's rows for every requested size, and one line per size saying where its processor came from."""
    sizes = [objs["image_size"]] if objs["image_size"] is not None else image_size_options()
    lora = objs["lora"]
    vision_trains = (lora.full and lora.train_vision) or (
        not lora.full and LoraTarget(lora.target) is not LoraTarget.language
    )
    _, b = precision_bytes(objs["trainer"].precision, objs["trainer"].device)
    layout = objs["data"].layout
    scratch = tempfile.mkdtemp(prefix="vlmqc-inspect-")
    try:
        return _rows(objs, models_dir, rows_data, sizes, vision_trains, b, layout, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rows(objs, models_dir, rows_data, sizes, vision_trains, b, layout, scratch) -> tuple[list[Row], list[str]]:
    rows, origins = [], []
    for size in sizes:
        try:
            family, processor, config, origin = source(objs["model"], size, models_dir, scratch)
        except ConfigError as e:
            if objs["image_size"] is not None:
                raise
            rows.append(Row(size.name, "-", None, note=str(e)))
            continue
        origins.append(f"image_size={size.name}: {origin}")
        collate = Collator(processor, family, objs["prompt"], True, layout)
        for row in rows_data:
            batch = collate([row])
            facts = family.image_facts(processor, SimpleNamespace(config=config), row_images(row, layout), batch)
            sequence = int(batch["attention_mask"].sum())
            # a preset built offline knows the model's shapes only if its facts carry config.json's text_config;
            # the family's default config would be some other model's
            shaped = (
                objs["model"].path is None
                or os.path.isdir(objs["model"].path)
                or "text_config" in objs["model"].processor
            )
            rows.append(
                Row(
                    size.name,
                    str(row["id"]),
                    facts,
                    sequence,
                    activation_bytes(config, facts, sequence, b, vision_trains) if shaped else None,
                )
            )
    return rows, origins


def _pixels(pairs: list[list[int]]) -> str:
    return " + ".join(f"{h}x{w}" for h, w in pairs)


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def table(rows: list[Row], batch_size: int) -> str:
    header = [
        "image_size",
        "example",
        "input px (HxW)",
        "processed px",
        "tiles",
        "image tok",
        "text tok",
        "sequence",
        "act/sample*",
        f"act/batch of {batch_size}*",
    ]
    lines = []
    for r in rows:
        if r.facts is None:
            lines.append([r.size, r.example, f"cannot: {r.note}"])
            continue
        f = r.facts
        lines.append(
            [
                r.size,
                r.example,
                _pixels(f.input_pixels),
                _pixels(f.processed_pixels),
                "+".join(map(str, f.tiles)),
                str(f.image_tokens),
                str(r.sequence - f.image_tokens),
                str(r.sequence),
                _mib(r.activation_bytes),
                _mib(None if r.activation_bytes is None else r.activation_bytes * batch_size),
            ]
        )
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(x[i]) for x in [header, *full]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [
        fmt(line)
        if len(line) == len(header)
        else "  ".join([line[0].ljust(widths[0]), line[1].ljust(widths[1]), line[2]])
        for line in lines
    ]
    return "\n".join(out)
