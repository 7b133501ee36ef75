"""``trainer.preprocess=once``: the training split encoded once, before training, and cached.

    train, collator, fact = prepare(dsd["train"], data_path, processor, family, prompt, layout, pixels, num_workers)

With ``step`` (the default) the Collator runs the family's processor on every row at every step:
image decode, resize, normalise, tokenise, twice (prompt + answer, and the prompt alone for the
label mask). A small model then waits for the host. With ``once`` each training example is
encoded by that same Collator, alone (a batch of one: its token ids, its answer-only labels and
every tensor the processor returns for its images), stored as one safetensors blob per row in a
``datasets`` Arrow folder beside the dataset, memory-mapped; ``EncodedCollator`` then only pads
and stacks. Nothing about the encoding is written twice: the label mask is the Collator's own.

The folder is ``<dataset folder>-encoded-<key>``; the key hashes everything that changes the
encoding: the dataset's own key (its folder name), the family, the processor's settings after
``set_image_size`` and its tokenizer, the prompt, the layout, the pixel storage dtype, the code
that writes the examples, the transformers version and ``VERSION``. It is built by the dataset
cache's process pool into a temporary folder renamed into place when complete (vlmqc/data/store.py),
so a second trial of a sweep with the same key loads it, and a half-written one is never read.

Stacking per-example encodings is the same as encoding the batch only where the processor pads
across the batch as ``stack`` does (right padding of the text with the pad id, labels -100, the
attention mask 0; image tensors concatenated along dim 0, any ragged dim zero-padded). That is
checked, not assumed: before the cache is used, the first rows are collated both ways and must
be equal in keys, shapes, dtypes and values; a family where they are not is refused with a
ConfigError naming trainer.preprocess and the family.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
import time
from pathlib import Path

import datasets
import torch
import transformers
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from vlmqc import prompts
from vlmqc.collate import IGNORE, Collator
from vlmqc.config import ConfigError, Layout, PixelStorage, PromptConfig
from vlmqc.data import layout as layouts
from vlmqc.data import store
from vlmqc.features import KEY

log = logging.getLogger(__name__)

VERSION = 1  # raise when what an encoded row holds changes in a way the hashed sources do not show
FEATURES = datasets.Features({"tensors": datasets.Value("binary")})  # one example's tensors, a safetensors blob
CHUNK = 200  # examples per Arrow file and per worker job
CHECK_ROWS = 8  # rows collated both ways before the cache is used
PIXELS = "pixel_values"


def stack(encoded: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Per-example encodings (each a batch of one) -> one batch, as the processor pads a batch:
    every key concatenated along dim 0, each ragged dim padded at its end (right padding) with
    the tokenizer's pad id (input_ids), IGNORE (labels) or 0 (attention and image masks, token
    types, padded image tiles)."""
    if any(e.keys() != encoded[0].keys() for e in encoded):
        raise ValueError(f"encoded examples with different keys: {sorted({tuple(sorted(e)) for e in encoded})}")
    batch = {}
    for key in encoded[0]:
        parts = [e[key] for e in encoded]
        fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
        shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for p in parts:
            if list(p.shape[1:]) == shape:
                padded.append(p)
                continue
            out = p.new_full([p.shape[0], *shape], fill)
            out[tuple(slice(0, n) for n in p.shape)] = p
            padded.append(out)
        batch[key] = torch.cat(padded)
    return batch


class EncodedCollator:
    """Rows of the encoded training split (``{"tensors": bytes}``) -> a padded batch, with no image
    work; other rows (the test split, for the Trainer's eval/loss: it has one collator for both)
    go to the plain ``collator``, as with trainer.preprocess=step."""

    def __init__(self, collator: Collator):
        self.collator, self.pad_id = collator, collator.processor.tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if "tensors" not in rows[0]:
            return self.collator(rows)
        encoded = [load_tensors(row["tensors"]) for row in rows]
        for e in encoded:
            if PIXELS in e and e[PIXELS].dtype == torch.bfloat16:
                # stored in bf16 (trainer.preprocess_pixels=bf16): back to float32, exactly, so the
                # model gets the dtype the processor gives; why this is the same computation: encode_row
                e[PIXELS] = e[PIXELS].float()
        batch = stack(encoded, self.pad_id)
        if KEY in rows[0]:  # the vision feature cache's keys, computed once from the images (vlmqc/train.py)
            batch[KEY] = [k for row in rows for k in row[KEY]]
        return batch


def encode_row(collator: Collator, row: dict, pixels: PixelStorage) -> bytes:
    """One example as the training Collator makes it (a batch of one), as safetensors bytes.

    ``pixels=bf16`` stores pixel_values rounded to bf16. Training in bf16 computes the same: the
    patch embedding (a conv, the first op that reads the pixels in the families that allow it,
    ``Family.bf16_pixels``) runs under autocast in bf16, so its input is rounded to bf16 either
    way, and bf16 -> float32 -> bf16 gives back the same value. Checked at the door:
    vlmqc.config.validate and ``prepare``."""
    batch = collator([row])
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"trainer.preprocess=once: the {collator.family.name} family's processor returns {key} as "
                f"{type(value).__name__}, not a tensor; use trainer.preprocess=step"
            )
    if pixels is PixelStorage.bf16 and PIXELS in batch:
        batch[PIXELS] = batch[PIXELS].to(torch.bfloat16)
    return save_tensors({k: v.contiguous() for k, v in batch.items()})


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    text += json.dumps(
        {
            "special": tokenizer.special_tokens_map,
            "pad": tokenizer.pad_token_id,
            "template": getattr(tokenizer, "chat_template", None),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(data_path: Path, processor, family, prompt: PromptConfig, layout: Layout, pixels: PixelStorage) -> str:
    """Hash of everything that changes an encoded example."""
    sources = [
        Path(__file__),
        Path(inspect.getfile(Collator)),
        Path(inspect.getfile(type(family))),
        *map(Path, {inspect.getfile(c) for c in type(family).__mro__ if c is not object}),
    ]
    sources += [Path(prompts.__file__), Path(layouts.__file__)]
    spec = {
        "version": VERSION,
        "dataset": Path(data_path).name,
        "family": family.name,
        "processor": processor.to_dict(),
        "chat_template": getattr(processor, "chat_template", None),
        "tokenizer": _tokenizer_digest(processor.tokenizer),
        "prompt": store.plain(prompt),
        "layout": Layout(layout).value,
        "pixels": pixels.value,
        "transformers": transformers.__version__,
        "sources": [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(set(sources))],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


# a worker's dataset, opened once per process (memory-mapped), not once per job
_opened: dict[str, datasets.Dataset] = {}


def _encoded_rows(task):
    """A worker's job: rows ``start:stop`` of the training split, encoded (store.build's ``rows_of``)."""
    collator, data_path, pixels, start, stop = task
    if data_path not in _opened:
        _opened[data_path] = store.load(Path(data_path))["train"]
    train = _opened[data_path]
    for i in range(start, stop):
        yield {"tensors": encode_row(collator, train[i], pixels)}


def check(
    train: datasets.Dataset, collator: Collator, encoded: EncodedCollator, pixels: PixelStorage, rows: int = CHECK_ROWS
) -> None:
    """The first ``rows`` training rows, collated by the Collator and by encoding each and stacking:
    the same batch (keys, shapes, dtypes, values) or a ConfigError naming the family."""
    sample = [train[i] for i in range(min(rows, len(train)))]
    want = collator(sample)
    got = encoded([{"tensors": encode_row(collator, row, pixels)} for row in sample])
    if pixels is PixelStorage.bf16 and PIXELS in want:
        want[PIXELS] = want[PIXELS].to(torch.bfloat16).float()  # what bf16 storage keeps: compared exactly as that
    name = collator.family.name
    if want.keys() != got.keys():
        raise ConfigError(
            f"trainer.preprocess=once: the {name} family's batches hold {sorted(want)}, its stacked examples "
            f"{sorted(got)}; use trainer.preprocess=step"
        )
    for key, w in want.items():
        g = got[key]
        if w.shape != g.shape or w.dtype != g.dtype or not torch.equal(w, g):
            raise ConfigError(
                f"trainer.preprocess=once: the {name} family's processor batches {key} differently from its "
                f"examples encoded one by one "
                f"({tuple(w.shape)} {w.dtype} against {tuple(g.shape)} {g.dtype}); use trainer.preprocess=step"
            )


def prepare(
    train: datasets.Dataset,
    data_path: Path,
    processor,
    family,
    prompt: PromptConfig,
    layout: Layout,
    pixels: PixelStorage = PixelStorage.fp32,
    bf16_training: bool = False,
    num_workers: int = 2,
    progress: bool = True,
) -> tuple[datasets.Dataset, EncodedCollator, dict]:
    """The encoded training split (built, or loaded from the cache), its collator, and the fact
    the run records: ``{"mode": "once", "path", "reused", "seconds", "examples", "pixels"}``."""
    start = time.perf_counter()
    if pixels is PixelStorage.auto:
        pixels = PixelStorage.bf16 if bf16_training and family.bf16_pixels else PixelStorage.fp32
    if pixels is PixelStorage.bf16 and not (bf16_training and family.bf16_pixels):
        why = (
            f"the {family.name} family's first use of pixel_values is not known to be a bf16 conv"
            if bf16_training
            else "this trial does not train in bf16"
        )
        raise ConfigError(
            f"trainer.preprocess_pixels=bf16: {why}, so bf16 pixels would change the computation; use "
            f"trainer.preprocess_pixels=fp32"
        )
    collator = Collator(processor, family, prompt, train=True, layout=layout)
    encoded = EncodedCollator(collator)
    check(train, collator, encoded, pixels)
    data_path = Path(data_path)
    path = (
        data_path.parent / f"{data_path.name}-encoded-{cache_key(data_path, processor, family, prompt, layout, pixels)}"
    )
    reused = (path / store.INFO).exists()
    if reused:
        log.info("preprocess: reusing the encoded training split %s", path)
        dsd = store.load(path)
    else:
        if path.exists():  # a folder without its info file is no build's (a build renames a complete one into place)
            log.warning("preprocess: %s is incomplete; removing it and encoding again", path)
            shutil.rmtree(path)
        log.info("preprocess: encoding %d training examples into %s (%d workers)", len(train), path, num_workers)
        n = len(train)
        tasks = [(collator, str(data_path), pixels, a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]
        info = {
            "name": path.name,
            "verb": "encoding",
            "examples": n,
            "dataset": data_path.name,
            "family": family.name,
            "pixels": pixels.value,
        }
        dsd = store.build(
            path, {"train": tasks}, _encoded_rows, info, num_workers=num_workers, progress=progress, features=FEATURES
        )
    encoded_train = dsd["train"]
    if len(encoded_train) != len(train):
        raise RuntimeError(f"{path}: {len(encoded_train)} encoded examples for {len(train)} training examples")
    seconds = round(time.perf_counter() - start, 3)
    log.info(
        "preprocess: %d examples ready in %.1f s (%s)", len(encoded_train), seconds, "reused" if reused else "built"
    )
    return (
        encoded_train,
        encoded,
        {
            "mode": "once",
            "path": str(path),
            "reused": reused,
            "seconds": seconds,
            "examples": len(encoded_train),
            "pixels": pixels.value,
        },
    )
