"""Throughput of the host's data work against the number of worker processes: drawing a dataset
and encoding its training split (trainer.preprocess=once), both in vlmqc's worker pool.

    python benchmarks/bench_data.py                                   # star, 1 worker to the core count
    python benchmarks/bench_data.py --examples 20000 --workers 16    # experiment=base/scratch's size, one point
    python benchmarks/bench_data.py --variants star diff --workers 1 2 --no-encode

For each variant and worker count, a fresh temporary cache (nothing reused): the dataset is drawn
(``get_dataset``), loaded again from its cache (what a second trial does), then its training split
is encoded with experiment=base/scratch's processor (model=scratch at 224 pixels, the short prompt)
by ``preprocess.prepare``. Thread settings are left as a user has them (no OMP_NUM_THREADS): the
pool gives each worker one thread (vlmqc/data/store.py), and this measures that it does.
Targets (issue 21): encoding scales with workers and is at least as fast per example as drawing;
20,000 examples encoded in under 30 s on a 16-core GPU host. Issue 2: 800 images of any variant
in under 10 s on 2 cores, a cached load under 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from vlmqc.config import CONF_DIR, ImageSizeConfig, Layout, data_config, register, to_object
from vlmqc.data import get_dataset
from vlmqc.models import load
from vlmqc.training import preprocess

CONF = str(CONF_DIR)


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return [*counts, cores]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["star"])
    ap.add_argument(
        "--examples", type=int, default=500, help="training examples drawn and encoded (plus 300 test examples drawn)"
    )
    ap.add_argument("--workers", nargs="+", type=int, default=None, help="default: 1, 2, 4, ... up to the core count")
    ap.add_argument("--no-encode", dest="encode", action="store_false", help="drawing only")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    counts = args.workers or worker_counts(cores)
    print(
        f"# {platform.processor() or platform.machine()}, {cores} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    print(
        f"{'variant':<12} {'workers':>7} {'drawn':>7} {'draw_s':>7} {'draw/s':>8} {'load_s':>7} {'encoded':>8} "
        f"{'encode_s':>8} {'encode/s':>9} {'enc/draw':>8}"
    )
    register()
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        for variant in args.variants:
            cfg = compose(
                "train",
                overrides=[
                    "experiment=base/scratch",
                    f"data={variant}",
                    f"data.train_size={args.examples}",
                    "data.test_size=300",
                ],
            )
            data_cfg, prompt = data_config(cfg), to_object(cfg.prompt, "prompt")
            for workers in counts:
                with tempfile.TemporaryDirectory() as cache:
                    start = time.perf_counter()
                    dsd, path = get_dataset(data_cfg, cache, num_workers=workers, progress=False)
                    draw = time.perf_counter() - start
                    drawn = sum(len(ds) for ds in dsd.values())
                    start = time.perf_counter()
                    again, _ = get_dataset(data_cfg, cache, num_workers=workers, progress=False)
                    _ = again["test"][0]["image"]  # touch a row: the load is real
                    cached = time.perf_counter() - start
                    line = f"{variant:<12} {workers:>7} {drawn:>7} {draw:>7.2f} {drawn / draw:>8.1f} {cached:>7.3f}"
                    if args.encode:
                        model_cfg = to_object(cfg.model, "model")
                        _, processor, family, _ = load(
                            model_cfg, ImageSizeConfig(name="224", size=224), os.path.join(cache, "models"), "cpu"
                        )
                        start = time.perf_counter()
                        train, _, fact = preprocess.prepare(
                            dsd["train"],
                            path,
                            processor,
                            family,
                            prompt,
                            Layout.stacked,
                            num_workers=workers,
                            progress=False,
                        )
                        encode = time.perf_counter() - start
                        assert not fact["reused"] and len(train) == len(dsd["train"])
                        n = len(train)
                        line += f" {n:>8} {encode:>8.2f} {n / encode:>9.1f} {(n / encode) / (drawn / draw):>7.2f}x"
                    print(line, flush=True)


if __name__ == "__main__":
    main()
