"""Datasets for the inspection study: synthetic tasks (star, pair, diff) and the user's own images.

    from vlmqc.data import get_dataset
    dsd, path = get_dataset(data_cfg, cache_dir="~/.cache/vlmqc/datasets")   # train and test

The first request for a config generates it (in ``num_workers`` processes) and caches it; later
requests load the cache. ``python -m vlmqc.data data=<option>`` does the same from the command
line and also prints the counts and draws a contact sheet.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import datasets

from vlmqc.config import (
    ConversationsConfig,
    CustomConfig,
    DataConfig,
    MmadConfig,
    MvtecConfig,
)
from vlmqc.data import store, synth

# the readers of data on disk, by config: each module's read(cfg) validates everything and returns
# its Source; rows(job) turns a chunk of it into rows (vlmqc/data/folder.py for the published layouts)
READERS = {
    CustomConfig: ("custom", "custom"),
    MvtecConfig: ("mvtec", "folder"),  # and VisaConfig, its subclass
    MmadConfig: ("mmad", "folder"),
    ConversationsConfig: ("conversations", "folder"),
}


def _plan(cfg: DataConfig, cache_dir: str | Path) -> tuple[Path, dict, object, dict]:
    """Where the dataset of ``cfg`` is cached, its chunk tasks by split, the function that draws
    (or reads) a chunk's rows, and its info; data on disk is validated here, before anything is written."""
    reader = next((r for kind, r in READERS.items() if isinstance(cfg, kind)), None)
    if reader is not None:
        source = importlib.import_module(f"vlmqc.data.{reader[0]}").read(cfg)  # validates everything first
        # the digest covers every file by its path inside the folder: a moved folder is the same data
        key = store.cache_key(dataclasses.replace(cfg, path=""), source.digest)
        rows_of = importlib.import_module(f"vlmqc.data.{reader[1]}").rows
        splits, n = source.chunks(store.CHUNK), source.size
    else:
        key = store.cache_key(cfg)
        splits = {split: synth.chunks(cfg, split, store.CHUNK) for split in synth.SPLITS}
        rows_of, n = synth.rows, cfg.train_size + cfg.test_size
    info = {"name": cfg.name, "task": cfg.task.value, "key": key, "examples": n, "config": store.plain(cfg)}
    return store.cache_path(cache_dir, cfg.name, key), splits, rows_of, info


def get_dataset(
    cfg: DataConfig, cache_dir: str | Path, num_workers: int = 2, progress: bool = True
) -> tuple[datasets.DatasetDict, Path]:
    """Load the dataset for ``cfg`` from the cache, generating it first if needed."""
    path, splits, rows_of, info = _plan(cfg, cache_dir)
    if (path / store.INFO).exists():
        return store.load(path), path
    return store.build(path, splits, rows_of, info, num_workers=num_workers, progress=progress), path


def first_examples(cfg: DataConfig, cache_dir: str | Path, n: int, split: str = "test") -> list[dict]:
    """The first ``n`` rows of ``split`` as ``get_dataset`` gives them, without building the rest:
    read from the cache when the dataset is there, else drawn (or read) alone, in this process,
    and not cached. A chunk's rows depend on its task alone, so they are the same rows either way."""
    path, splits, rows_of, _ = _plan(cfg, cache_dir)
    if (path / store.INFO).exists():
        rows = store.load(path)[split]
        return list(rows.select(range(min(n, len(rows)))))
    out = []
    for task in splits.get(split, []):
        for row in rows_of(task):
            out.append(store.FEATURES.decode_example(row))
            if len(out) == n:
                return out
    return out
