"""Frozen vision features, computed once per image: the image path (vision tower and projector)
run without autograd, and its output cached per image, in memory across epochs and on disk
across the trials of a sweep and reruns.

    python -m vlmqc.train trainer.vision_cache=memory         # a trial's later epochs skip the tower
    python -m vlmqc.train -m trainer.vision_cache=disk trainer.lr=1e-4,2e-4 prompt=long,short
                                                              # the sweep pays for the tower once

It applies where the image path has no trainable parameter after ``adapt`` (LoRA on the language
model, ``lora.target=language``) and no dropout: what trains is read from ``requires_grad`` on the
real modules, and checked again on the first training step (features that require grad). Where
it does not apply, one log line says why and the trial runs as without it: caching features that
train would be wrong. Full fine-tuning trains the projector, so it does not apply there either.

How features reach the model, without editing transformers:

- the collator attaches one key per image (``attach_keys``): a hash of the image's pixels, in
  the order the processor gets the images;
- a forward pre-hook on the transformers model pops them from the batch, so they pass PEFT's
  wrapper, DDP and the Trainer unchanged;
- the inner model's ``get_image_features`` (the one its forward calls; transformers 5 returns
  per-image features in ``pooler_output``) is wrapped as an instance attribute: when every image
  of the batch is cached, the tower does not run; otherwise it runs on the whole batch under
  ``torch.no_grad`` (the first training step with autograd, as the check above) and the new
  images are stored. A batch mixes seen and unseen images only in rare cases (a resumed epoch),
  so the misses are not split out: that would need each family's layout of ``pixel_values``.

An entry's key is the image's pixels under a fingerprint of everything else that sets the
features: the image path's weights, buffers and dtypes, the model config, the image processor's
settings (the resolution), the trial's precision and device type, the torch and transformers
versions. On disk: ``<paths.features_dir>/<fingerprint>/<key[:2]>/<key>.safetensors``, each file
written atomically, and ``meta.json`` with what the fingerprint was made of. The summary's
``facts.vision_cache`` says whether it was used, with hits and misses (train and evaluation loss
batches), per epoch too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlmqc.config import VisionCache
from vlmqc.files import read_json, write_atomic, write_json

log = logging.getLogger(__name__)

KEY = "image_feature_keys"  # the batch's extra key: one key per image, in the processor's order
IMAGE_PARTS = ("vision", "projector")  # the family's parts that get_image_features runs


def image_key(image) -> str:
    """An image's key: a hash of its mode, size and pixels (what the processor reads)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def row_keys(rows, layout) -> list[list[str]]:
    """Each row's image keys, in the order the collator hands its images to the processor: the
    column that encoded rows (trainer.preprocess=once) carry, since their images are not decoded
    again at each step."""
    from vlmqc.data.layout import images as row_images

    return [[image_key(im) for im in row_images(row, layout)] for row in rows]


def attach_keys(batch: dict, images: list[list]) -> dict:
    """Add the per-image keys to a collated batch; ``images`` per example, as the processor got
    them (flattened in that order, as ``Family.encode`` does)."""
    batch[KEY] = [image_key(im) for imgs in images for im in imgs]
    return batch


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under PEFT's wrapper (or the model itself)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _refusal(base: torch.nn.Module, family) -> str | None:
    """Why the image path's features cannot be cached, or None."""
    params = [(n, p) for n, p in base.named_parameters() if family.part(n) in IMAGE_PARTS]
    if not params:
        return f"no vision tower or projector found in this {family.name} model"
    trainable = [n for n, p in params if p.requires_grad]
    if trainable:
        return (
            f"the image path trains ({len(trainable)} tensors, e.g. {trainable[0]}), so its features change every step"
        )
    if not callable(getattr(_inner(base), "get_image_features", None)):
        return f"this {family.name} model has no get_image_features"
    dropout = [
        n
        for n, m in base.named_modules()
        if family.part(n) in IMAGE_PARTS and isinstance(m, torch.nn.Dropout) and m.p > 0
    ]
    vision_config = getattr(base.config, "vision_config", None)
    dropout += [
        f"vision_config.{k}"
        for k, v in (vision_config.to_dict() if vision_config is not None else {}).items()
        if "dropout" in k and isinstance(v, float) and v > 0
    ]
    if dropout:
        return f"the image path has dropout ({dropout[0]}), so its features are random in training"
    return None


def _inner(base: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward calls ``get_image_features``: transformers 5's ``XForConditionalGeneration.model``."""
    inner = getattr(base, "model", None)
    return (
        inner if isinstance(inner, torch.nn.Module) and callable(getattr(inner, "get_image_features", None)) else base
    )


def fingerprint(base: torch.nn.Module, family, processor, precision: str, device: str) -> tuple[str, dict]:
    """A hash of everything besides the image that sets its features, and what it was made of."""
    import transformers

    config = {k: v for k, v in base.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    image_processor = getattr(processor, "image_processor", None)
    spec = {
        "model_class": type(base).__name__,
        "config": config,
        "image_processor": image_processor.to_dict() if image_processor is not None else None,
        "precision": precision,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    tensors = [*base.named_parameters(), *base.named_buffers()]
    weights = 0
    for name, t in sorted((n, t) for n, t in tensors if family.part(n) in IMAGE_PARTS):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
        weights += t.numel()
    return h.hexdigest(), {**spec, "image_path_values": weights}


class FeatureCache:
    """The wrapped ``get_image_features`` and its store; ``stats`` counts hits and misses."""

    def __init__(self, mode: VisionCache, folder: Path | None, fingerprint: str, spec: dict, memory_gb: float = 8.0):
        self.mode, self.fingerprint, self.spec = VisionCache(mode), fingerprint, spec
        self.folder = folder / fingerprint if folder is not None and self.mode is VisionCache.disk else None
        self.memory: dict[str, torch.Tensor] = {}
        # host RAM is bounded: 20,000 Qwen2-VL-2B images at 448 px are 14 GB of features, per trial. Past the
        # bound no entry is added (no eviction: which images hit stays predictable); disk mode reads the rest
        # from disk, memory mode computes them again
        self.memory_limit = int(memory_gb * 2**30)
        self.memory_bytes = 0
        self.memory_full = False
        self.kind: tuple[bool, str] | None = None  # (wrapped in an output object, container): what forward expects back
        self.pending: list[str] | None = None  # the keys of the forward in progress
        self.checked = False  # the first call with autograd on confirmed that nothing trainable feeds the features
        self.active = True
        self.reason: str | None = None
        self.stats = {
            "train": {"hits": 0, "misses": 0},
            "eval": {"hits": 0, "misses": 0},
            "disk_hits": 0,
            "disk_writes": 0,
        }
        self.epochs: list[dict] = []
        if self.folder is not None:
            meta = read_json(self.folder / "meta.json")
            if meta and meta.get("kind"):
                self.kind = (bool(meta["kind"][0]), str(meta["kind"][1]))

    # ------------------------------------------------------------------ the store

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None and self._path(key).is_file():
            from safetensors.torch import load_file

            features = load_file(self._path(key))["features"]
            self.stats["disk_hits"] += 1
            self._keep(key, features)
            return features
        return None

    def _keep(self, key: str, features: torch.Tensor) -> None:
        """Into the in-memory tier, while it is under trainer.vision_cache_memory_gb."""
        size = features.numel() * features.element_size()
        if self.memory_bytes + size > self.memory_limit:
            if not self.memory_full:
                self.memory_full = True
                log.info(
                    "vision feature cache: trainer.vision_cache_memory_gb=%g reached after %d images; further "
                    "images are %s",
                    self.memory_limit / 2**30,
                    len(self.memory),
                    "read from disk" if self.folder is not None else "computed again each time",
                )
            return
        self.memory[key] = features
        self.memory_bytes += size

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", copy=True).contiguous()
        self._keep(key, features)
        if self.folder is not None and not self._path(key).is_file():
            from safetensors.torch import save

            self._path(key).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path(key), save({"features": features}))
            self.stats["disk_writes"] += 1

    def _remember_kind(self, kind: tuple[bool, str]) -> None:
        if self.kind == kind:
            return
        self.kind = kind
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / "meta.json", {"kind": list(kind), **self.spec})

    def _stop(self, reason: str) -> None:
        self.active, self.reason = False, reason
        self.memory.clear()
        self.memory_bytes = 0
        log.warning("vision feature cache off: %s", reason)

    # ------------------------------------------------------------------ the model's side

    def pre_hook(self, module, args, kwargs):
        self.pending = kwargs.pop(KEY, None)
        return args, kwargs

    def wrap(self, original):
        # wraps: its signature is the original's, which generate() (transformers 5.2x) reads to pass it pixel_values
        @functools.wraps(original)
        def get_image_features(*args, **kwargs):
            keys, self.pending = self.pending, None
            if not self.active or keys is None:
                return original(*args, **kwargs)
            counts = self.stats["train" if torch.is_grad_enabled() else "eval"]
            cached = [self.get(k) for k in keys]
            if self.kind is not None and all(c is not None for c in cached):
                counts["hits"] += len(keys)
                pixels = kwargs.get("pixel_values", args[0] if args else None)
                device = pixels.device if isinstance(pixels, torch.Tensor) else None
                return self._pack([c.to(device) for c in cached])
            if torch.is_grad_enabled() and not self.checked:
                out = original(*args, **kwargs)  # with autograd, once: whether anything trainable feeds the features
                self.checked = True
                if any(f.requires_grad for f in self._unpack(out)[1]):
                    self._stop("the image features require grad: some parameter of the image path trains")
                    return out
            else:
                with torch.no_grad():
                    out = original(*args, **kwargs)
            kind, features = self._unpack(out)
            if len(features) != len(keys):
                self._stop(
                    f"get_image_features gave {len(features)} feature tensors for {len(keys)} images; this "
                    f"family's layout is not one per image"
                )
                return out
            self._remember_kind(kind)
            counts["misses"] += len(keys)
            for key, f in zip(keys, features, strict=True):
                self.put(key, f)
            return out

        return get_image_features

    @staticmethod
    def _unpack(out) -> tuple[tuple[bool, str], list[torch.Tensor]]:
        wrapped = hasattr(out, "pooler_output")
        pooled = out.pooler_output if wrapped else out
        container = "tensor" if isinstance(pooled, torch.Tensor) else type(pooled).__name__
        return (wrapped, container), list(pooled)

    def _pack(self, features: list[torch.Tensor]):
        wrapped, container = self.kind
        pooled = (
            torch.stack(features)
            if container == "tensor"
            else tuple(features)
            if container == "tuple"
            else list(features)
        )
        return BaseModelOutputWithPooling(pooler_output=pooled) if wrapped else pooled

    # ------------------------------------------------------------------ records

    def hit_rate(self, part: str = "train") -> float | None:
        s = self.stats[part]
        total = s["hits"] + s["misses"]
        return s["hits"] / total if total else None

    def facts(self) -> dict:
        return {
            "mode": self.mode.value,
            "used": self.active,
            "reason": self.reason,
            "fingerprint": self.fingerprint,
            "train_hit_rate": self.hit_rate("train"),
            **{k: v for k, v in self.stats.items()},
            "epochs": self.epochs,
            "cached_images": len(self.memory),
            "memory_bytes": self.memory_bytes,
            # trainer.vision_cache_memory_gb was reached: later images not kept in memory
            "memory_full": self.memory_full,
        }

    def callback(self) -> TrainerCallback:
        return _EpochLog(self)


class _EpochLog(TrainerCallback):
    """One log line per epoch: the training batches' hits and misses in it."""

    def __init__(self, cache: FeatureCache):
        self.cache, self.seen = cache, {"hits": 0, "misses": 0}

    def on_epoch_end(self, args, state, control, **kwargs):
        now = dict(self.cache.stats["train"])
        epoch = {k: now[k] - self.seen[k] for k in now}
        self.seen = now
        self.cache.epochs.append(epoch)
        log.info(
            "vision feature cache, epoch %d: %d hits, %d misses (%s)",
            len(self.cache.epochs),
            epoch["hits"],
            epoch["misses"],
            "on" if self.cache.active else f"off: {self.cache.reason}",
        )


def enable(
    model: torch.nn.Module,
    family,
    processor,
    mode: VisionCache | str,
    folder: str | Path | None,
    precision: str,
    device: str,
    memory_gb: float = 8.0,
) -> FeatureCache | None:
    """Cache ``model``'s image features (after ``adapt``), or say in one log line why not.

    Returns the cache (its ``active`` is False where it was refused: ``facts`` records why), or
    None for ``trainer.vision_cache=off``. The collator attaches keys only where it is active.
    """
    mode = VisionCache(mode)
    if mode is VisionCache.off:
        return None
    base = _base(model)
    reason = _refusal(base, family)
    if reason is not None:
        cache = FeatureCache(mode, None, "", {})
        cache.active, cache.reason = False, reason
        log.info("trainer.vision_cache=%s: not used: %s", mode.value, reason)
        return cache
    digest, spec = fingerprint(base, family, processor, precision, device)
    cache = FeatureCache(mode, Path(folder).expanduser() if folder is not None else None, digest, spec, memory_gb)
    inner = _inner(base)
    inner.get_image_features = cache.wrap(
        inner.get_image_features
    )  # an instance attribute: forward's self.get_image_features
    base.register_forward_pre_hook(cache.pre_hook, with_kwargs=True)
    log.info(
        "trainer.vision_cache=%s: image features cached under fingerprint %s%s",
        mode.value,
        digest,
        f" in {cache.folder}" if cache.folder else "",
    )
    return cache


def facts(cache: FeatureCache | None) -> dict:
    """What the summary records of the cache (``facts.vision_cache``)."""
    return cache.facts() if cache is not None else {"mode": VisionCache.off.value, "used": False}
