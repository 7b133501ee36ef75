"""Data-parallel scaling of one trial: the same trial on 1 GPU and on N GPUs, same global batch.

    python benchmarks/bench_ddp.py --out /tmp/ddp                                   # 1 vs 2 GPUs, Qwen2-VL-2B shape
    python benchmarks/bench_ddp.py --gpus 2 --batch 8 --steps 40 -- data=pair_mixed   # extra overrides after --

Both trials run through the real entry point (``python -m vlmqc.train``): the 1-GPU trial with
``trainer.devices=1 trainer.elastic=true`` (the same elastic-launcher path, NCCL), the N-GPU one
with ``trainer.devices=N`` and the per-device batch divided by N, so the global batch, data order
and learning rate are the same. Printed: both loss curves side by side and their largest relative
difference; steady-state training throughput of each (median of the logged samples/s, the first
logging interval, which holds compilation and warm-up, left out); and the scaling efficiency,
throughput(N) / throughput(1). Target (issue 6): at least 1.8x on 2 GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vlmqc.runs.records import Summary, read_metrics, read_summary

DEFAULTS = [
    "model=qwen2_vl_2b_random",
    "data=pair_round",
    "prompt=short",
    "lora=r16",
    "logger=none",
    "trainer.device=cuda",
    "trainer.eval_before=false",
    "trainer.eval_every=0",
    "trainer.eval_limit=8",
    "trainer.samples=2",
    "trainer.max_new_tokens=16",
    "trainer.save_steps=100000",
    "trainer.warmup_ratio=0",
    "lora.dropout=0",
]


def trial(run_dir: Path, overrides: list[str]) -> tuple[Summary, list[dict], float]:
    cmd = [sys.executable, "-m", "vlmqc.train", f"hydra.run.dir={run_dir}", *overrides]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (run_dir / "stdout.log").write_text(out.stdout + out.stderr) if run_dir.exists() else None
    if out.returncode != 0:
        sys.exit(f"trial failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
    summary, problems = read_summary(run_dir / "summary.json")
    rows, bad = read_metrics(run_dir / "metrics.jsonl")
    if summary is None:
        sys.exit("\n".join(problems) or f"{run_dir / 'summary.json'}: missing")
    for p in [*problems, *bad]:  # a value left out is named; the rest is measured
        print(f"warning: {p}", file=sys.stderr)
    return summary, rows, wall


def series(rows: list[dict], key: str) -> dict[int, float]:
    return {r["trainer/global_step"]: r[key] for r in rows if key in r and isinstance(r[key], (int, float))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_ddp"))
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="global batch (per device: batch / gpus)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--logging-steps", type=int, default=5)
    ap.add_argument(
        "--accumulate",
        action="store_true",
        help="the 1-GPU trial reaches the global batch by gradient accumulation (per-device batch equal in both): "
        "measures what data parallelism costs, apart from how the per-device batch size changes a step",
    )
    ap.add_argument("overrides", nargs="*", help="more overrides for both trials (after --)")
    args = ap.parse_args()
    if args.batch % args.gpus:
        sys.exit(f"--batch {args.batch} is not divisible by --gpus {args.gpus}")
    common = [
        *DEFAULTS,
        f"data.train_size={args.batch * args.steps}",
        f"trainer.max_steps={args.steps}",
        f"trainer.logging_steps={args.logging_steps}",
        *args.overrides,
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    per_device = args.batch // args.gpus
    single = (
        [f"trainer.batch_size={per_device}", f"trainer.grad_accum={args.gpus}"]
        if args.accumulate
        else [f"trainer.batch_size={args.batch}"]
    )
    one = trial(args.out / "gpus-1", [*common, *single, "trainer.devices=1", "trainer.elastic=true"])
    many = trial(
        args.out / f"gpus-{args.gpus}",
        [*common, f"trainer.batch_size={args.batch // args.gpus}", f"trainer.devices={args.gpus}"],
    )

    report = {
        "command": " ".join(sys.argv),
        "gpus": args.gpus,
        "global_batch": args.batch,
        "accumulate": args.accumulate,
        "steps": args.steps,
        "overrides": common,
    }
    baseline = f"batch {per_device} x {args.gpus} accumulated" if args.accumulate else f"batch {args.batch}"
    print(f"\nloss, global batch {args.batch}: 1 GPU ({baseline}) vs {args.gpus} GPUs (batch {per_device} each)")
    loss1, lossn = series(one[1], "train/loss"), series(many[1], "train/loss")
    print(f"{'step':>6} {'1 GPU':>10} {f'{args.gpus} GPUs':>10} {'rel diff':>9}")
    diffs = []
    for step in sorted(loss1):
        if step in lossn:
            d = abs(lossn[step] - loss1[step]) / abs(loss1[step])
            diffs.append(d)
            print(f"{step:>6} {loss1[step]:>10.4f} {lossn[step]:>10.4f} {d:>9.2e}")
    report["loss"] = {"1": loss1, str(args.gpus): lossn, "max_rel_diff": max(diffs) if diffs else None}

    for name, (summary, rows, wall) in (("1", one), (str(args.gpus), many)):
        sps = [v for s, v in sorted(series(rows, "train/samples_per_second").items())][1:]
        facts = summary.facts
        report[f"gpus_{name}"] = {
            "samples_per_second_median": statistics.median(sps) if sps else None,
            "samples_per_second_all": sps,
            "peak_gpu_memory_gb": max(series(rows, "train/peak_gpu_memory_gb").values(), default=None),
            "wall_seconds": round(wall, 1),
            "runtime_seconds": summary.runtime_seconds,
            "distributed_backend": facts.get("distributed_backend"),
            "world_size": facts.get("world_size"),
            "effective_batch": facts.get("effective_batch"),
            "trainable_parameters": facts.get("trainable_parameters"),
            "total_parameters": facts.get("total_parameters"),
            "image_tokens_per_sample": facts.get("image_tokens_per_sample"),
            "processed_resolution": facts.get("processed_resolution"),
            "gpu": facts.get("gpu"),
        }
    s1, sn = report["gpus_1"]["samples_per_second_median"], report[f"gpus_{args.gpus}"]["samples_per_second_median"]
    report["scaling"] = sn / s1 if s1 and sn else None
    print()
    for name in ("1", str(args.gpus)):
        r = report[f"gpus_{name}"]
        print(
            f"{name} GPU(s): {r['samples_per_second_median']:.2f} samples/s (median of "
            f"{len(r['samples_per_second_all'])} intervals), "
            f"peak {r['peak_gpu_memory_gb']} GiB, backend {r['distributed_backend']}, world {r['world_size']}, "
            f"wall {r['wall_seconds']} s"
        )
    print(
        f"scaling: {report['scaling']:.3f}x on {args.gpus} GPUs (efficiency {report['scaling'] / args.gpus:.1%}); "
        f"largest loss difference {report['loss']['max_rel_diff']:.2e} (relative)"
    )
    tmp = args.out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out / "report.json")


if __name__ == "__main__":
    main()
