"""Batched greedy evaluation against one example at a time: speed, and whether the answers are the same.

    python benchmarks/bench_eval.py                                             # tiny model, CPU, 32 test rows,
        batch 1 vs 32
    python benchmarks/bench_eval.py --rows 300 --batch-sizes 1 64 300 -- model=scratch data=pair_round
    python benchmarks/bench_eval.py --rows 300 --batch-sizes 1 64 -- model=qwen2_vl_2b_random trainer.device=cuda
    python benchmarks/bench_eval.py --rows 64 --batch-sizes 1 64 --workers 0 4 -- experiment=base/scratch   #
        collating in 4 processes

The same test rows (the first ``--rows`` of the test split of the composed trial config; extra
Hydra overrides after ``--``) are answered by ``vlmqc.predict.predict``, the function a trial's
evaluation runs, at each batch size in turn, and with each ``--workers`` count (trainer.eval_workers: processes that
collate the batches while the model generates); the first batch size with the first count is the
reference. Each gets one untimed warm-up batch first; the workers start anew in the timed run, as
at each of a trial's evaluations. Printed: seconds, examples/s, the speed-up over the reference and
how many generated texts differ from the reference's. Exit status 1 when any text differs.

In fp32 (the CPU default) batching must not change a single answer: left padding is masked and
the position ids follow the mask. In bf16 (the GPU default, ``model.dtype=auto``) a batch's matrix
products may take other kernels than a single row's and round differently, so a few answers can
legitimately differ; ``model.dtype=float32`` checks the harness itself on the GPU.
Target (issue 13): batched >= 20x one by one on the GPU, identical answers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import transformers
from hydra import compose, initialize_config_dir

from vlmqc.config import CONF_DIR, register
from vlmqc.data import get_dataset
from vlmqc.devices import pick_device
from vlmqc.evaluation.generate import predict
from vlmqc.models import load
from vlmqc.preflight import quote_numeric_options, validate

CONF = str(CONF_DIR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32, help="the first N rows of the test split (default 32)")
    ap.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="the first is the reference (default: 1 and --rows)"
    )
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="collating processes, each count at each batch size (default: trainer.eval_workers)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's trainer.max_new_tokens")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the trial config, after --")
    args = ap.parse_args(argv)
    sizes = args.batch_sizes or [1, args.rows]
    if args.rows < 1 or min(sizes) < 1:
        ap.error("--rows and every batch size must be >= 1")
    if args.workers is not None and min(args.workers) < 0:
        ap.error("every --workers count must be >= 0")

    register()
    with initialize_config_dir(version_base="1.3", config_dir=os.path.abspath(CONF)):
        cfg = compose("train", overrides=["logger=none", "paths.output_dir=.", *quote_numeric_options(args.overrides)])
    objs = validate(cfg)
    data_cfg, t = objs["data"], objs["trainer"]
    max_new_tokens = args.max_new_tokens or t.max_new_tokens
    worker_counts = args.workers or [t.eval_workers]
    device = pick_device(t.device)
    dsd, _ = get_dataset(data_cfg, cfg.paths.cache_dir, num_workers=cfg.num_workers, progress=False)
    rows = list(dsd["test"].select(range(min(args.rows, len(dsd["test"])))))
    model, processor, family, path = load(
        objs["model"], objs["image_size"], cfg.paths.models_dir, device, data_cfg.layout
    )
    model.to(device)
    param = next(model.parameters())
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    print(
        f"# {gpu}, torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"# model {objs['model'].name} ({path}), {param.dtype}, attention {model.config._attn_implementation}; "
        f"data {data_cfg.name}, "
        f"{len(rows)} test rows, max_new_tokens {max_new_tokens}"
    )

    def run(batch_size: int, workers: int) -> tuple[list[dict], float]:
        predict(
            model,
            processor,
            family,
            objs["prompt"],
            rows[:batch_size],
            batch_size,
            max_new_tokens,
            data_cfg.layout,
            workers,
        )  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = predict(
            model, processor, family, objs["prompt"], rows, batch_size, max_new_tokens, data_cfg.layout, workers
        )
        return out, time.perf_counter() - started  # the texts are on the host: the GPU has finished

    print(f"{'batch':>6} {'workers':>8} {'seconds':>9} {'examples/s':>11} {'speed-up':>9} {'differ':>7}")
    reference, base = None, None
    differ_total = 0
    for size, workers in ((s, w) for s in sizes for w in worker_counts):
        out, seconds = run(size, workers)
        rate = len(rows) / seconds
        if reference is None:
            reference, base = out, rate
        differ = [r["id"] for r, a, b in zip(rows, reference, out, strict=True) if a["text"] != b["text"]]
        differ_total += len(differ)
        print(f"{size:>6} {workers:>8} {seconds:>9.2f} {rate:>11.2f} {rate / base:>8.1f}x {len(differ):>7}", flush=True)
        for row_id in differ[:3]:
            i = next(k for k, r in enumerate(rows) if r["id"] == row_id)
            print(f"         {row_id}: {reference[i]['text'][:60]!r} -> {out[i]['text'][:60]!r}")
    if differ_total:
        print(
            f"{differ_total} generated text(s) differ from batch size {sizes[0]}'s with {worker_counts[0]} workers",
            file=sys.stderr,
        )
        return 1
    print(f"every generated text identical to batch size {sizes[0]}'s with {worker_counts[0]} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
