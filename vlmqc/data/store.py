"""The dataset cache: one folder per data config, keyed by a hash, written atomically.

A dataset is a ``datasets.DatasetDict`` (Arrow files, images in an ``Image`` feature) saved
under ``<cache_dir>/<name>-<key>`` in the layout of ``DatasetDict.save_to_disk``, so
``datasets.load_from_disk(folder)`` opens it (memory-mapped) in any program; ``vlmqc.json``
beside the splits says how it was made. The key hashes the resolved data config, the source of the
modules that draw the pixels and the versions of the libraries that encode them, so a cached
dataset is always the one the current code would generate. A build goes to a temporary
folder that is renamed into place only when complete: an interrupted build leaves nothing
that a later run could mistake for a dataset.

Workers come from a forkserver, not a fork of the caller: the caller is often a training process
that already runs threads (a tracker, a launcher), and a fork taken while one of them holds a
lock leaves the child waiting on it forever. A worker that dies (the out-of-memory killer) fails
the build at once, through ``concurrent.futures``' ``BrokenProcessPool``.
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
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import datasets
import numpy
import PIL
from datasets.arrow_writer import ArrowWriter
from PIL import Image
from tqdm.auto import tqdm

from vlmqc.files import publish

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),  # stable within a dataset: inference samples are logged by id
        "task": datasets.Value("string"),
        "image": datasets.Image(),  # what the model sees
        "source_image": datasets.Image(),  # diff task: the raw pair the image was derived from
        # images shown before `image`, in order: the good reference of an MVTec query, MMAD's templates (layout.py)
        "context": datasets.List(datasets.Image()),
        "verdict": datasets.Value("string"),  # pass | defective | "" (star task, or an answer-only row)
        "defects": datasets.List({"position": datasets.Value("string"), "type": datasets.Value("string")}),
        "target": datasets.Value("string"),  # star task: the star's position
        "shape": datasets.Value("string"),  # terminal shape of the product
        "answer": datasets.Value("string"),  # custom rows labelled with a free answer text
        "meta": datasets.Value("string"),  # JSON: how the example was made (nuisance, defect details, file)
        "question": datasets.Value("string"),  # JSON: what the row asks beyond its task (vlmqc/tasks.py), or ""
    }
)
INFO = "vlmqc.json"
_SOURCES = (
    *("board.py", "nuisance.py", "synth.py", "diff.py", "custom.py", "store.py", "../labels.py"),
    *("folder.py", "mvtec.py", "mmad.py", "conversations.py"),  # the readers of published layouts
)


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
    rows_of, task, path, features = job
    n = 0
    with ArrowWriter(features=features, path=str(path)) as writer:
        for row in rows_of(task):
            writer.write(row)
            n += 1
        writer.finalize()
    return n


# imported once by the forkserver, so that each worker it forks starts with the drawing code loaded
_PRELOAD = ["vlmqc.data.store", "vlmqc.data.synth", "vlmqc.data.custom", "vlmqc.data.folder"]
# the thread pools a worker may start (torch's OpenMP pool, BLAS's), and one thread each: the workers
# already fill the cores, and a pool of one thread per core in each of N workers runs N x cores threads
# on the cores (0 of 3,000 examples encoded after 47 s on 16 cores; 2 s with one thread each). PyTorch's
# DataLoader sets one thread per worker for the same reason.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _preload() -> list[str]:
    """What the forkserver imports once, so each worker it forks finds it imported: the drawing
    code, and the vlmqc modules the caller has imported (with torch, where the caller has it: the
    encoding workers need it, and importing it in each of 16 workers costs seconds apiece).

    The caller's main module itself is left out: every worker re-runs it as ``__mp_main__`` before
    its first job (multiprocessing's rule for forkserver and spawn), and runpy warns when the
    module it re-runs is already imported ("'vlmqc.train' found in sys.modules"). Its imports are in
    the list, so the re-run only defines its functions."""
    main = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)
    loaded = sorted(m for m in list(sys.modules) if m.startswith("vlmqc.") and m != main and not m.endswith("__main__"))
    return list(dict.fromkeys(_PRELOAD + loaded))


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (Linux, macOS), else spawn; never a plain fork."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_preload())  # no effect once the server runs; it keeps its first list
    return ctx


def _single_threaded() -> None:
    """A worker's initializer: one intra-op thread (see _THREAD_VARIABLES). The variables hold for
    libraries the worker imports later (their pools read them when they load); torch, when the
    forkserver already imported it, is told directly."""
    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def worker_pool(num_workers: int) -> ProcessPoolExecutor:
    """The worker processes of a build: forked from a forkserver, one thread each."""
    return ProcessPoolExecutor(num_workers, mp_context=_context(), initializer=_single_threaded)


class WorkerDied(RuntimeError):
    """A worker process was killed while it generated a chunk; nothing was cached."""


def build(
    final: Path,
    splits: dict[str, list],
    rows_of: Callable[[object], Iterable[dict]],
    info: dict,
    num_workers: int = 2,
    progress: bool = True,
    features: datasets.Features = FEATURES,
) -> datasets.DatasetDict:
    """Write every split, chunk by chunk in worker processes, then publish ``final`` in one rename.

    ``splits`` maps a split to its chunk tasks; ``rows_of(task)`` yields a chunk's rows, of
    ``features`` (a dataset's by default; vlmqc/preprocess.py writes encoded examples). Workers
    write their own Arrow files, so images never travel between processes. ``rows_of`` must be
    importable by name (a module-level function): workers do not share the caller's memory.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final.parent, final.name)

    def write(tmp: Path) -> None:
        pool = None
        try:
            start = time.perf_counter()
            # one Arrow file per chunk, named as save_to_disk names its shards; workers write them directly
            for split in splits:
                (tmp / split).mkdir()
            jobs = [
                (rows_of, task, tmp / split / _shard(k, len(tasks)), features)
                for split, tasks in splits.items()
                for k, task in enumerate(tasks)
            ]
            bar = tqdm(
                total=info.get("examples"),
                desc=f"{info.get('verb', 'generating')} {info['name']}",
                unit="img",
                disable=not progress,
                file=sys.stderr,
            )
            if num_workers > 1 and len(jobs) > 1:
                pool = worker_pool(min(num_workers, len(jobs)))
                done = (f.result() for f in as_completed([pool.submit(_write_chunk, job) for job in jobs]))
            else:
                done = map(_write_chunk, jobs)
            try:
                for n in done:
                    bar.update(n)
            except BrokenProcessPool as e:
                raise WorkerDied(
                    f"{info.get('verb', 'generating')} dataset {info['name']!r}: a worker process died (killed by "
                    f"a signal; out of memory?); "
                    f"nothing was cached. Retry with fewer workers (num_workers={num_workers}) or more memory."
                ) from e
            bar.close()
            made = {
                **info,
                "build_seconds": round(time.perf_counter() - start, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_dataset_dict(tmp, {split: len(tasks) for split, tasks in splits.items()}, features, final.name)
            (tmp / INFO).write_text(json.dumps(made, indent=2, sort_keys=True))
        finally:
            if pool is not None:
                # waits for the chunks being written (a second at most), so none lands after the folder is removed
                pool.shutdown(wait=True, cancel_futures=True)

    # another process may publish the same dataset first: theirs is identical, and kept
    publish(final, write, done=lambda path: (path / INFO).exists())
    return load(final)


def _shard(k: int, n: int) -> str:
    return f"data-{k:05d}-of-{n:05d}.arrow"


def _write_dataset_dict(folder: Path, shards: dict[str, int], features: datasets.Features, fingerprint: str) -> None:
    """The files ``DatasetDict.save_to_disk`` writes beside its shards (``dataset_dict.json``, and
    each split's ``state.json`` and ``dataset_info.json``), for shards the workers wrote themselves:
    save_to_disk would copy every image once more through this process."""
    for split, n in shards.items():
        state = {
            "_data_files": [{"filename": _shard(k, n)} for k in range(n)],
            "_fingerprint": hashlib.sha256(f"{fingerprint}/{split}".encode()).hexdigest()[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (folder / split / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        datasets.DatasetInfo(features=features).write_to_directory(str(folder / split))
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(shards)}))


def load(path: Path) -> datasets.DatasetDict:
    """The cached splits, memory-mapped from their Arrow files (``datasets.load_from_disk``)."""
    return datasets.load_from_disk(str(path))


def read_info(path: Path) -> dict:
    return json.loads((path / INFO).read_text())
