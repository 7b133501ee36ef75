"""Loading a VLM and its processor through its family, setting the input resolution, adding LoRA.

    from vlmqc.models import load, adapt
    model, processor, family, path = load(cfg.model, cfg.image_size, models_dir, "cuda")

The loader reads the checkpoint's ``model_type`` (its config.json, as data) and hands the checkpoint to the
family registered for it (``vlmqc/models/<family>.py``, a ``Family`` subclass, see family.py): a
real checkpoint (``model.path=<folder or hub id>``) and a tiny random model built offline
(``model.random=<family>``) take the same path. A family is registered by naming its module in
``FAMILY_MODULES``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import warnings
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import PretrainedConfig

from vlmqc.config import ConfigError, ImageSizeConfig, Layout, LoraConfig, LoraTarget, ModelConfig, Precision
from vlmqc.devices import DTYPES, resolve_precision
from vlmqc.models import offline
from vlmqc.models.family import Family, ImageFacts

__all__ = [
    "Family",
    "ImageFacts",
    "adapt",
    "check",
    "families",
    "family_for",
    "load",
    "parameter_counts",
    "peft_warnings_off",
    "portable_id",
    "random_checkpoint",
    "resolve_dtype",
]

# one module per family, each defining one Family subclass; imported on first use, not at import time
FAMILY_MODULES = (
    "llava",
    "llava_onevision",
    "idefics3",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "paligemma",
    "gemma3",
    "internvl",
    "phi3_v",
    "phi4_multimodal",
)

_families: dict[str, Family] = {}


def families() -> dict[str, Family]:
    """Every registered family by its name (what ``model.random`` names)."""
    if not _families:
        for module in FAMILY_MODULES:
            mod = importlib.import_module(f"vlmqc.models.{module}")
            for obj in vars(mod).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, Family)
                    and obj is not Family
                    and obj.__module__ == mod.__name__
                ):
                    _families[obj.name] = obj()
    return _families


def family_for(model_type: str) -> Family:
    """The family that loads checkpoints of this ``model_type``; a ConfigError listing the supported ones."""
    for family in families().values():
        if model_type in family.model_types:
            return family
    supported = sorted(t for f in families().values() for t in f.model_types)
    raise ConfigError(
        f"model_type {model_type!r} (the checkpoint's config.json) is not supported; supported model types: "
        f"{', '.join(supported)}"
    )


def _random_family(cfg: ModelConfig) -> Family:
    if cfg.random not in families():
        raise ConfigError(
            f"model.random={cfg.random}: no family of that name; families: {', '.join(sorted(families()))}"
        )
    return families()[cfg.random]


def _model_type(path: str) -> str:
    # config.json as data (a local folder or a hub id): no remote code runs before the family's checks
    return PretrainedConfig.get_config_dict(path)[0].get("model_type")


def check(cfg: ModelConfig, image_size: ImageSizeConfig, layout: Layout) -> None:
    """The family's checks at the door, where the family is known without the network: a random
    model's, or a local folder's (its config.json's model_type). A hub id's is checked at load."""
    if cfg.path is None:
        _random_family(cfg).check(cfg, image_size, layout)
        return
    config = Path(cfg.path) / "config.json"
    if config.is_file():  # read as JSON: no remote code runs at the door; a folder without one fails at load
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type:
            family_for(model_type).check(cfg, image_size, layout)


def random_checkpoint(cfg: ModelConfig, size: int | None, models_dir: str | os.PathLike) -> Path:
    """The folder of the random model ``cfg.random``, built (atomically) if it is not there yet."""
    family = _random_family(cfg)
    return offline.built(
        Path(models_dir).expanduser() / family.random_folder(cfg, size),
        lambda path: family.build_random(cfg, size, path),
    )


def portable_id(cfg: ModelConfig, path: str) -> str:
    """The base model's name for other machines: ``model.path`` as the user gave it (a hub id or
    their folder), or, for a model built offline, ``vlmqc-random:<family>/<folder>``, which the
    same preset rebuilds anywhere (a cache path would name a folder only this machine has)."""
    return cfg.path if cfg.path is not None else f"vlmqc-random:{cfg.random}/{Path(path).name}"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``model.dtype``: ``auto`` as precision ``auto`` resolves on this device (vlmqc/devices.py), else the named
    dtype."""
    if name == "auto":
        return DTYPES[resolve_precision(Precision.auto, device)]
    return getattr(torch, name)


def load(
    cfg: ModelConfig, image_size: ImageSizeConfig, models_dir: str, device: str, layout: Layout = Layout.stacked
) -> tuple[torch.nn.Module, object, Family, str]:
    """The model, its processor set to the requested resolution, its family, and the path loaded."""
    path = str(random_checkpoint(cfg, image_size.size, models_dir)) if cfg.path is None else cfg.path
    family = family_for(_model_type(path))
    family.check(cfg, image_size, layout)
    processor = family.load_processor(path, cfg.trust_remote_code)
    kwargs = {"dtype": resolve_dtype(cfg.dtype, device)}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = family.load_model(path, cfg.trust_remote_code, **kwargs)
    # what a saved adapter names as its base model (adapter_config.json, the model card): the id
    # the user gave, not this machine's cache folder, so the adapter loads elsewhere
    model.name_or_path = model.config._name_or_path = portable_id(cfg, path)
    if image_size.size is not None:
        family.set_image_size(processor, model, image_size.size)
    return model, processor, family, path


@contextlib.contextmanager
def peft_warnings_off():
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a model
    (peft_model.py), a FutureWarning on every train, predict and serve that neither vlmqc nor its
    users can act on; silenced here, where the wrapping happens, and nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def adapt(model: torch.nn.Module, family: Family, cfg: LoraConfig) -> torch.nn.Module:
    """LoRA adapters (PEFT) on the chosen parts' linear layers, or full fine-tuning; the rest frozen.
    Which module is which part is the family's answer (``Family.part``)."""
    if cfg.full:
        for name, p in model.named_parameters():
            p.requires_grad = family.part(name) != "vision" or cfg.train_vision
        return model
    parts = {
        LoraTarget.language: {"language"},
        LoraTarget.language_vision: {"language", "vision", "projector"},
        LoraTarget.all_linear: {"language", "vision", "projector", "other"},
    }[LoraTarget(cfg.target)]
    output = model.get_output_embeddings()
    targets = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not output and family.part(n) in parts
    ]
    if not targets:
        raise ConfigError(f"lora.target={cfg.target.value}: no linear layer of this model matches")
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none"
    )
    with peft_warnings_off():
        return get_peft_model(model, peft_cfg)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
