"""Training throughput against batch size and image size (issue 13): benchmarks/bench_train.py's
recipes (c) hf-tuned and (d) vlmqc, run once per image size x batch size, in one table and one plot.

    python benchmarks/bench_scaling.py --out /tmp/scaling --batch-sizes 8 16 32 64 --image-sizes 224 448 \\
        --vlmqc-overrides "trainer.preprocess=once trainer.loss=answer_only trainer.dataloader_workers=4" \\
        -- model=qwen2_vl_2b_random data=pair_round prompt=short lora=r16 data.train_size=640 num_workers=16
    python benchmarks/bench_scaling.py --out /tmp/scaling-cpu --device cpu --steps 2 --warmup 1 --batch-sizes 2 4 \\
        --image-sizes 224 -- model=tiny data.train_size=16   # CPU smoke

Each point is one ``bench_train.py`` run in its own subprocess, so an out-of-memory error or a crash
at one point is recorded as that point's failure (with the tail of its stderr) and the sweep goes
on. A run gets ``--batch B`` (recipe c's batch, no batch search), ``trainer.batch_size=B`` appended
to ``--vlmqc-overrides`` (recipe d's batch) and ``image_size=S`` (an option of conf/image_size)
appended to the overrides after ``--``, which every run and every recipe gets; its folder is
``--out``/S-B, with bench_train's report.json and its output in bench_train.log. Each run checks its
recipes' losses against the reference as bench_train does; a run whose check fails is a failed point.
A recipe that runs out of memory at a point (bench_train records it and runs the others) is a
failed row of that point; the other recipes' rows keep their figures.

The figures are bench_train's, read from each report.json: samples/s and tokens/s over the timed
steps (after ``--warmup``), peak GPU memory (torch.cuda.max_memory_allocated; none on the CPU) and
MFU (model FLOPs / the GPU's dense bf16 peak; none on the CPU). (b) trl's batch is (c)'s, and (a)
notebook's is always 1, so those two recipes can be swept but their batch axis is (c)'s.

Written to ``--out`` after every point (atomically, so a sweep stopped part-way keeps what it
measured; ``not_run`` lists the points it had not reached): scaling.json (one row per image size x
batch size x recipe: its figures, or why it failed), scaling.png (samples/s against batch size, log2 axis, one line
per recipe x image
size; a second panel of peak memory; failed points left out and named under the figure), and the
table printed.

Exit status: 0 every run succeeded; 1 some run failed (the table and both files still written); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench_recipes import RECIPES, parse_recipes  # a sibling module: this folder is on sys.path when the script runs

BENCH_TRAIN = Path(__file__).resolve().parent / "bench_train.py"
# a traceback's last line (torch.OutOfMemoryError: ..., hydra.errors.MissingConfigException: ...) or bench_train's own
EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b|config error:|recipe [a-d]:)")
FIGURES = ("samples_per_second", "tokens_per_second", "peak_memory_gb", "mfu")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--batch-sizes",
        type=positive,
        nargs="+",
        default=[8, 16, 32, 64],
        help="batch sizes (recipe c's --batch, recipe d's trainer.batch_size)",
    )
    ap.add_argument(
        "--image-sizes",
        nargs="+",
        default=["224", "448"],
        help="vlmqc image_size options (conf/image_size), e.g. 224 448 native",
    )
    ap.add_argument("--recipes", default="c,d", help="bench_train recipes, comma-separated (default c,d)")
    ap.add_argument("--steps", type=positive, default=20, help="timed steps per recipe and run")
    ap.add_argument("--warmup", type=positive, default=3, help="steps before timing starts")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for scaling.json, scaling.png and one sub-folder per run"
    )
    ap.add_argument(
        "--vlmqc-overrides",
        default="",
        help="extra overrides for recipe d only, quoted (trainer.batch_size=B is appended per run)",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="vlmqc overrides for every run and recipe (after --); image_size=S is appended per run",
    )
    args = ap.parse_args(argv)
    args.recipes = parse_recipes(ap, args.recipes)
    args.recipes = sorted(set(args.recipes))
    try:
        args.vlmqc_overrides = shlex.split(args.vlmqc_overrides)
    except ValueError as e:
        ap.error(f"--vlmqc-overrides: {e}")
    taken = [
        o
        for o in [*args.overrides, *args.vlmqc_overrides]
        if o.split("=", 1)[0].lstrip("+~") in ("image_size", "trainer.batch_size")
    ]
    if taken:
        ap.error(
            f"{' '.join(taken)}: the sweep sets image_size and trainer.batch_size itself (--image-sizes, --batch-sizes)"
        )
    if len(set(args.batch_sizes)) != len(args.batch_sizes) or len(set(args.image_sizes)) != len(args.image_sizes):
        ap.error("--batch-sizes and --image-sizes must not repeat a value")
    return args


def command(args, size: str, batch: int, out: Path) -> list[str]:
    return [
        sys.executable, str(BENCH_TRAIN), "--recipes", ",".join(args.recipes),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--batch", str(batch),
        "--vlmqc-overrides", shlex.join([*args.vlmqc_overrides, f"trainer.batch_size={batch}"]),
        "--out", str(out), "--", *args.overrides, f"image_size={size}",
    ]  # fmt: skip


def why(rc: int, stdout: str, stderr: str, report: dict | None) -> str:
    """A failed run's reason: the failed loss check, else a headline (the last exception line of its
    stderr, out of memory named) and then the tail of its stderr."""
    if report is not None and not report.get("loss_check", {}).get("passed", True):
        return f"exit {rc}: loss check failed for recipe(s) {','.join(report['loss_check'].get('failed', []))}"
    if report is not None and report.get("failed_recipes"):  # bench_train ran the others
        errors = report["failed_recipes"]
        oom = any("out of memory" in e.lower() or "OutOfMemoryError" in e for e in errors.values())
        first = next(iter(errors.values())).splitlines()[0][:300]
        return f"exit {rc}{' (out of memory)' if oom else ''}: recipe(s) {','.join(sorted(errors))} failed: {first}"
    lines = [line for line in stderr.splitlines() if line.strip()] or [
        line for line in stdout.splitlines() if line.strip()
    ]
    tail = "\n".join(lines[-12:])[-1500:]
    raised = [line for line in lines if EXCEPTION.match(line)]
    headline = raised[-1] if raised else (lines[-1] if lines else "(no output)")
    oom = "out of memory" in stderr.lower() or "OutOfMemoryError" in stderr
    return f"exit {rc}{' (out of memory)' if oom else ''}: {headline.strip()[:300]}\n{tail}"


def run_one(args, size: str, batch: int) -> tuple[list[dict], str | None]:
    """One bench_train run at (size, batch): a row per recipe, and why it failed (None: it did not)."""
    out = (args.out / f"{size}-{batch}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # a previous sweep's figures are not this run's
    cmd = command(args, size, batch, out)
    print("$", shlex.join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except OSError as e:
        rc, stdout, stderr = -1, "", f"{type(e).__name__}: {e}"
    (out / "bench_train.log").write_text(f"$ {shlex.join(cmd)}\n{stdout}\n--- stderr ---\n{stderr}")
    report = None
    if (out / "report.json").is_file():
        try:
            report = json.loads((out / "report.json").read_text())
        except (OSError, ValueError) as e:
            rc, stderr = rc or 1, f"{stderr}\n{out / 'report.json'}: unreadable ({e})"
    if rc == 0 and report is None:
        rc, stderr = 1, f"{stderr}\n{out / 'report.json'}: missing"
    failure = why(rc, stdout, stderr, report) if rc != 0 else None
    rows = []
    # bench_train records a recipe that ran out of memory and runs the others: their figures stand
    # (the loss check passed for them), the failed recipe's row carries its own error
    failed_recipes = (
        (report or {}).get("failed_recipes", {}) if (report or {}).get("loss_check", {}).get("passed", False) else {}
    )
    for key in args.recipes:
        row = {"image_size": size, "batch": batch, "recipe": key, "name": RECIPES[key], "run": str(out), "ok": False}
        fig = (report or {}).get("recipes", {}).get(key)
        if key in failed_recipes:
            row["error"] = f"recipe {key}: {failed_recipes[key][:1500]}"
        elif failure is not None and not (failed_recipes and fig is not None):
            row["error"] = failure
        elif fig is None:
            row["error"] = f"recipe {key} missing from {out / 'report.json'}"
        else:
            row.update({k: fig.get(k) for k in FIGURES}, recipe_batch=fig.get("batch"), ok=True)
        rows.append(row)
    return rows, failure


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (
        f"{'image':>6} {'batch':>5} {'recipe':<12} {'samples/s':>10} {'tokens/s':>10} {'peak GiB':>9} "
        f"{'MFU':>6}  failure"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        label = f"{r['recipe']} {r['name']}"
        if r["ok"]:
            lines.append(
                f"{r['image_size']:>6} {r['batch']:>5} {label:<12} {fmt(r['samples_per_second'], '.2f'):>10} "
                f"{fmt(r['tokens_per_second'], '.1f'):>10} "
                f"{fmt(r['peak_memory_gb'], '.2f'):>9} {fmt(r['mfu'], '.1%'):>6}"
            )
        else:
            first = r["error"].splitlines()[0] if r["error"] else ""
            lines.append(
                f"{r['image_size']:>6} {r['batch']:>5} {label:<12} {'-':>10} {'-':>10} {'-':>9} {'-':>6}  FAILED "
                f"{first[:100]}"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str, pending: list[tuple[str, int]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    lines = sorted({(r["recipe"], r["name"], r["image_size"]) for r in rows}, key=lambda k: (k[0], k[2]))
    any_memory = False
    for i, (recipe, name, size) in enumerate(lines):
        points = sorted(
            ((r["batch"], r) for r in rows if (r["recipe"], r["image_size"]) == (recipe, size) and r["ok"]),
            key=lambda p: p[0],
        )
        if not points:  # every point of this line failed: named in the caption
            continue
        label = f"({recipe}) {name}, image_size={size}"
        style = {
            "marker": "o",
            "linestyle": "-" if recipe == "d" else "--",
            "color": f"C{i % 10}",
        }  # the same colour in both panels
        speed.plot([b for b, _ in points], [r["samples_per_second"] for _, r in points], label=label, **style)
        mem = [(b, r["peak_memory_gb"]) for b, r in points if r["peak_memory_gb"] is not None]
        any_memory |= bool(mem)
        memory.plot([b for b, _ in mem], [m for _, m in mem], label=label, **style)
    batches = sorted({r["batch"] for r in rows})
    for ax, ylabel in ((speed, "samples/s"), (memory, "peak memory (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    speed.set_title("training throughput")
    speed.set_ylim(bottom=0)
    memory.set_title("peak GPU memory")
    if speed.lines:
        speed.legend(fontsize="small")
    if not any_memory:
        memory.text(0.5, 0.5, "not measured (no GPU)", ha="center", va="center", transform=memory.transAxes)
        memory.set_yticks([])
    elif memory.lines:
        memory.legend(fontsize="small")
    failed = sorted({(r["image_size"], r["batch"]) for r in rows if not r["ok"]}, key=lambda p: (p[0], p[1]))

    def recipes_failed(s, b) -> str:
        return ",".join(r["recipe"] for r in rows if (r["image_size"], r["batch"]) == (s, b) and not r["ok"])

    caption = "failed, left out: " + "; ".join(
        f"image_size={s} batch={b} ({recipes_failed(s, b)})" for s, b in failed
    ) if failed else "every point ran" if not pending else ""  # fmt: skip
    if pending:  # a sweep stopped part-way: the points it never reached, so a short line is not read as the whole sweep
        caption = "; ".join(
            filter(
                None,
                [caption, "not run (sweep stopped): " + ", ".join(f"image_size={s} batch={b}" for s, b in pending)],
            )
        )
    fig.suptitle(title, fontsize="medium")
    fig.text(
        0.5,
        0.01,
        "\n".join(textwrap.wrap(caption, 160)),
        ha="center",
        va="bottom",
        fontsize="small",
        color="tab:red" if failed or pending else "black",
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    points = [(s, b) for s in args.image_sizes for b in args.batch_sizes]
    for i, (size, batch) in enumerate(points, 1):
        started = time.perf_counter()
        got, failure = run_one(args, size, batch)
        rows += got
        if failure:
            failures.append({"image_size": size, "batch": batch, "error": failure})
        status = "FAILED " + failure.splitlines()[0][:200] if failure else "ok"
        print(
            f"[{i}/{len(points)}] image_size={size} batch={batch}: {status} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        # after every point, so a sweep stopped part-way (a time limit, a lost machine) keeps what it measured
        write(args, argv, rows, failures, points[i:])
    print()
    print(table(rows))
    for f in failures:
        log = args.out / f"{f['image_size']}-{f['batch']}" / "bench_train.log"
        print(f"\nimage_size={f['image_size']} batch={f['batch']} failed ({log}):\n{f['error']}")
    print(f"\n{args.out / 'scaling.json'}\n{args.out / 'scaling.png'}")
    return 1 if failures else 0


def write(args, argv: list[str] | None, rows: list[dict], failures: list[dict], pending: list[tuple[str, int]]) -> None:
    """scaling.json and scaling.png, atomically, for the points run so far (``pending``: not yet run)."""
    summary = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "recipes": args.recipes,
        "batch_sizes": args.batch_sizes,
        "image_sizes": args.image_sizes,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "device": args.device,
        "overrides": args.overrides,
        "vlmqc_overrides": args.vlmqc_overrides,
        "rows": rows,
        "failed": failures,
        "not_run": [{"image_size": s, "batch": b} for s, b in pending],  # empty once the sweep has finished
    }
    tmp = args.out / ".scaling.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, args.out / "scaling.json")
    title = f"bench_train recipes {','.join(args.recipes)}: {' '.join(args.overrides) or '(default overrides)'}"
    if args.vlmqc_overrides:
        title += f"\n(d) {' '.join(args.vlmqc_overrides)}"
    if pending:
        title += f" (partial: {len(pending)} of the sweep's points not run)"
    plot(rows, args.out / "scaling.png", "\n".join(textwrap.wrap(title, 140)), pending)


if __name__ == "__main__":
    sys.exit(main())
