"""Images per second of dataset generation, per variant, and the time of a cached load.

    python benchmarks/bench_data.py                    # every variant, 500 train + 300 test
    python benchmarks/bench_data.py --variants diff --workers 1 2

Each variant is generated into a fresh temporary cache (nothing reused), then loaded again
from that cache in a new Python process-free call, which is what a training run does.
Target (issue 2): 800 images of any variant in under 10 s on a 2-core machine, cached load under 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from hydra import compose, initialize_config_dir

from vlmqc.config import data_config
from vlmqc.data import get_dataset

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["star", "pair_square", "pair_round", "pair_mixed", "diff"])
    ap.add_argument("--workers", nargs="+", type=int, default=[2])
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'variant':<12} {'workers':>7} {'images':>7} {'generate_s':>10} {'images/s':>9} {'cached_load_s':>13}")
    with initialize_config_dir(version_base="1.3", config_dir=os.path.abspath(CONF)):
        for variant in args.variants:
            for workers in args.workers:
                cfg = data_config(compose("data_app", overrides=[f"data={variant}", "paths.output_dir=."]))
                with tempfile.TemporaryDirectory() as cache:
                    t0 = time.perf_counter()
                    dsd, _ = get_dataset(cfg, cache, num_workers=workers, progress=False)
                    gen = time.perf_counter() - t0
                    n = sum(len(ds) for ds in dsd.values())
                    t0 = time.perf_counter()
                    again, _ = get_dataset(cfg, cache, num_workers=workers, progress=False)
                    _ = again["test"][0]["image"]  # touch a row: the load is real
                    load = time.perf_counter() - t0
                print(f"{variant:<12} {workers:>7} {n:>7} {gen:>10.2f} {n / gen:>9.1f} {load:>13.3f}", flush=True)


if __name__ == "__main__":
    main()
