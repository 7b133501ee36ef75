"""The dataset cache: one folder per data config, keyed by a hash, written atomically.

A dataset is a ``datasets.DatasetDict`` (Arrow files, images in an ``Image`` feature) saved
under ``<cache_dir>/<name>-<key>``. The key hashes the resolved data config, the source of the
modules that draw the pixels and the versions of the libraries that encode them, so a cached
dataset is always the one the current code would generate. A build goes to a temporary
folder that is renamed into place only when complete: an interrupted build leaves nothing
that a later run could mistake for a dataset.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import datasets
import numpy
import PIL
from datasets.arrow_writer import ArrowWriter
from PIL import Image
from tqdm.auto import tqdm

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # stable within a dataset: inference samples are logged by id
        "task": datasets.Value("string"),
        "image": datasets.Image(),  # what the model sees
        "source_image": datasets.Image(),  # diff task: the raw pair the image was derived from
        "verdict": datasets.Value("string"),  # pass | defective | "" (star task, or an answer-only row)
        "defects": datasets.List({"position": datasets.Value("string"), "type": datasets.Value("string")}),
        "target": datasets.Value("string"),  # star task: the star's position
        "shape": datasets.Value("string"),  # terminal shape of the product
        "answer": datasets.Value("string"),  # custom rows labelled with a free answer text
        "meta": datasets.Value("string"),  # JSON: how the example was made (nuisance, defect details, file)
    }
)
INFO = "vlmqc.json"
_SOURCES = ("board.py", "nuisance.py", "synth.py", "diff.py", "custom.py", "store.py", "../labels.py")


def encode(img: Image.Image, fmt: str = "WEBP") -> dict:
    """Lossless image bytes, in the form the datasets Image feature stores.

    Sensor noise makes the synthetic images incompressible; lossless WebP at effort 0 encodes
    them three times faster than PNG at its fastest level, and smaller (BENCHMARKS.md).
    """
    buf = io.BytesIO()
    if fmt == "WEBP":
        img.save(buf, format="WEBP", lossless=True, method=0, quality=0)
    else:
        img.save(buf, format=fmt, compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def cache_key(cfg, content_digest: str = "") -> str:
    """Hash of what determines the bytes: the config, the drawing code, the encoders' versions."""
    h = hashlib.sha256()
    spec = plain(cfg)
    spec.pop("layout", None)  # how the model is shown a row (vlmqc/data/layout.py), not what is stored
    h.update(json.dumps(spec, sort_keys=True).encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    h.update(f"pillow={PIL.__version__} numpy={numpy.__version__} datasets={datasets.__version__}".encode())
    h.update(content_digest.encode())
    return h.hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike, name: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"{name}-{key}"


def _remove_abandoned(cache_dir: Path, stem: str) -> None:
    """Temporary folders of builds whose process is gone (killed mid-build)."""
    for tmp in cache_dir.glob(f".tmp-{stem}-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


CHUNK = 25  # examples per Arrow file: fixed, so the files do not depend on the number of workers


def _write_chunk(job) -> int:
    rows_of, task, path = job
    n = 0
    with ArrowWriter(features=FEATURES, path=str(path)) as writer:
        for row in rows_of(task):
            writer.write(row)
            n += 1
        writer.finalize()
    return n


def build(final: Path, splits: dict[str, list], rows_of: Callable[[object], Iterable[dict]], info: dict, num_workers: int = 2, progress: bool = True) -> datasets.DatasetDict:
    """Write every split, chunk by chunk in worker processes, then publish ``final`` in one rename.

    ``splits`` maps a split to its chunk tasks; ``rows_of(task)`` yields a chunk's rows. Workers
    write their own Arrow files, so images never travel between processes.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final.parent, final.name)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    pool = None
    try:
        start = time.perf_counter()
        jobs = [(rows_of, task, tmp / f"{split}-{k:05d}.arrow") for split, tasks in splits.items() for k, task in enumerate(tasks)]
        bar = tqdm(total=info.get("examples"), desc=f"generating {info['name']}", unit="img", disable=not progress, file=sys.stderr)
        if num_workers > 1 and len(jobs) > 1:
            # fork: workers start in milliseconds; they run only numpy and PIL code
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(min(num_workers, len(jobs)))
            done = pool.imap_unordered(_write_chunk, jobs)
        else:
            done = map(_write_chunk, jobs)
        for n in done:
            bar.update(n)
        bar.close()
        info = {**info, "build_seconds": round(time.perf_counter() - start, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / INFO).exists():
                raise
            # another process published the same dataset first; theirs is identical
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return load(final)


def load(path: Path) -> datasets.DatasetDict:
    """The cached splits, memory-mapped from their Arrow files."""
    splits = sorted({p.name.rsplit("-", 1)[0] for p in path.glob("*.arrow")}, key=lambda s: (s != "train", s))
    return datasets.DatasetDict(
        {split: datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in sorted(path.glob(f"{split}-*.arrow"))]) for split in splits}
    )


def read_info(path: Path) -> dict:
    return json.loads((path / INFO).read_text())
