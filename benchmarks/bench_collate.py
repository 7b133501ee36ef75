"""Samples per second of the host's side of a training step: rows fetched from the dataset and
collated, by the plain Collator (trainer.preprocess=step) and from the encoded cache
(trainer.preprocess=once), one process, model=scratch on pair_mixed.

    python benchmarks/bench_collate.py                          # 224 and 448, 512 examples, batch 64
    python benchmarks/bench_collate.py --sizes 224 --examples 256 --pixels fp32 bf16

Each size builds the scratch model's processor at that resolution, the dataset and the encoded
cache in a temporary folder (the encoding's time is printed too: it is paid once per sweep), then
times whole passes over the examples in batches, as the Trainer's DataLoader does without workers.
Target (issue 13): the encoded path far above the GPU's ~3,500 samples/s of model=scratch, so the
host no longer bounds it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from vlmqc.collate import Collator
from vlmqc.config import CONF_DIR, ImageSizeConfig, Layout, PixelStorage, data_config, register, to_object
from vlmqc.data import get_dataset
from vlmqc.models import load
from vlmqc.training import preprocess

CONF = str(CONF_DIR)


def rate(dataset, collator, batch: int, passes: int) -> float:
    """Examples per second of fetching rows and collating them, the best of ``passes``."""
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        for a in range(0, len(dataset), batch):
            # __getitems__: how torch's DataLoader fetches a batch from a datasets Dataset
            collator(dataset.__getitems__(list(range(a, min(a + batch, len(dataset))))))
        best = max(best, len(dataset) / (time.perf_counter() - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=int, default=[224, 448])
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--pixels", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    torch.set_num_threads(1)  # one process, one core: what a DataLoader worker has
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, one "
        f"process, batch {args.batch}"
    )
    print(
        f"{'size':>5} {'pixels':>6} {'examples':>8} {'step/s':>8} {'once/s':>9} {'ratio':>7} {'encode/s':>8} "
        f"{'MB/example':>10}"
    )
    register()
    with initialize_config_dir(version_base="1.3", config_dir=CONF), tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            "train",
            overrides=[
                "experiment=base/scratch",
                "data=pair_mixed",
                f"data.train_size={args.examples}",
                "data.test_size=8",
            ],
        )
        dsd, path = get_dataset(data_config(cfg), tmp, num_workers=2, progress=False)
        train, prompt = dsd["train"], to_object(cfg.prompt, "prompt")
        for size in args.sizes:
            _, processor, family, _ = load(
                to_object(cfg.model, "model"),
                ImageSizeConfig(name=str(size), size=size),
                os.path.join(tmp, "models"),
                "cpu",
            )
            plain = Collator(processor, family, prompt, train=True, layout=Layout.stacked)
            step = rate(train, plain, args.batch, args.passes)
            for pixels in map(PixelStorage, args.pixels):
                start = time.perf_counter()
                encoded_train, encoded, fact = preprocess.prepare(
                    train,
                    path,
                    processor,
                    family,
                    prompt,
                    Layout.stacked,
                    pixels,
                    bf16_training=True,
                    num_workers=1,
                    progress=False,
                )
                encode = len(train) / (time.perf_counter() - start)
                folder = fact["path"]
                mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / len(train) / 2**20
                once = rate(encoded_train, encoded, args.batch, args.passes)
                print(
                    f"{size:>5} {pixels.value:>6} {len(train):>8} {step:>8.1f} {once:>9.1f} {once / step:>6.1f}x "
                    f"{encode:>8.1f} {mb:>10.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
