"""Side by side training speed (issue 13): four recipes on one GPU, one model, one dataset, one loss.

    python benchmarks/bench_train.py --out /tmp/bench -- model=qwen2_vl_2b_random data=pair_round prompt=short
        lora=r16 image_size=448
    python benchmarks/bench_train.py --out /tmp/bench-scratch -- experiment=base/scratch data.train_size=4000
    python benchmarks/bench_train.py --recipes a,c,d --device cpu --steps 3 --warmup 1 -- model=tiny
        data.train_size=16   # CPU smoke

Everything after ``--`` is a vlmqc Hydra override, composed from conf/ and validated as
``python -m vlmqc.train`` does, so all recipes train the same random checkpoint
(``vlmqc.models.load``), the same rows (``vlmqc.data.get_dataset``), the same prompt and answer
text (``vlmqc.prompts``) and the same LoRA or full fine-tuning setup (``vlmqc.models.adapt``):

- (a) notebook: transformers' Trainer, batch 1, gradient checkpointing, the collator processing
  each batch (vlmqc's Collator, a plain processor call), no dataloader workers;
- (b) trl: TRL's ``SFTTrainer`` with its VLM collator, fed TRL's conversational prompt-completion
  format (``prompt`` / ``completion`` messages + ``images``) so its completion-only loss learns the
  answer tokens as the others do (TRL's assistant-only loss needs transformers >= 5.18 for images);
  TRL's own defaults (gradient checkpointing on) at recipe (c)'s batch unless ``--trl-batch``;
- (c) hf-tuned: transformers' Trainer, no checkpointing, the largest batch that fits (``--batch``,
  or a doubling search that stops at the first out-of-memory), ``--workers`` dataloader workers;
- (d) vlmqc: ``python -m vlmqc.train`` in a subprocess with the same overrides, plus
  ``--vlmqc-overrides`` (its GPU speed levers); throughput and peak memory are read from its
  metrics.jsonl, the logging intervals that start before ``--warmup`` steps left out.

Before timing, each recipe computes the loss of the first ``--check`` training rows from the
initial weights through its own collator and its own ``compute_loss`` (dropout off, in the recipe's
micro-batches, token-weighted); (d)'s goes through vlmqc's Collator and train.py's
``training_arguments`` + Trainer. Each must agree within ``--rtol`` (bf16 default 2e-2, fp32 1e-4)
with the reference: the model's own loss on vlmqc's answer-only labels, row by row without padding.
Else the script exits 1: a recipe that is faster because it computes something else fails here.

Timing: ``--warmup`` steps, then ``--steps`` timed steps (CUDA synchronised at both ends).
samples/s = steps x batch / time; tokens/s = non-padding tokens (attention mask) / time; peak
memory = torch.cuda.max_memory_allocated, reset per recipe, the previous recipe's model freed.
MFU = model FLOPs per token x tokens/s / peak FLOP/s (``--peak-tflops``, else from the GPU's
name: 989 TFLOP/s dense bf16 for an H100 SXM). Model FLOPs per token are counted on the check
rows, one example at a time (no padding): every linear layer's 2 x in x out per row it sees in
the forward pass; as much again for its activation gradient where a trainable weight ran before
it (frozen layers below every trainable one get none), as much again for its weight gradient where the
weight trains (LoRA: only the adapters' weights); plus the language model's attention scores,
4 L s^2 d forward (x3 with its backward) per sequence of s tokens. So full fine-tuning is
6 N T, LoRA about 4 N T + 6 N_lora T; the vision tower's attention is left out, and recomputation
(gradient checkpointing) is not model FLOPs: MFU is conservative.

A recipe that runs out of GPU memory (or whose vlmqc trial fails) is recorded in report.json's
``failed_recipes`` with its error, and the other recipes still run: at a batch that only the
leaner recipe fits, that recipe's figure is the point.

Exit status: 0, the table printed (and ``--out``/report.json written); 1 the loss check failed or a recipe failed (the
report still written); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from bench_recipes import RECIPES, parse_recipes  # a sibling module: this folder is on sys.path when the script runs
from hydra import compose, initialize_config_dir
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from vlmqc import config as schema
from vlmqc.collate import IGNORE, Collator
from vlmqc.data import get_dataset
from vlmqc.data.layout import images as row_images
from vlmqc.models import adapt, load
from vlmqc.preflight import quote_numeric_options, validate
from vlmqc.prompts import instruction, render_answer
from vlmqc.runs.records import read_metrics

# dense bf16 tensor-core peaks (NVIDIA's data sheets, without sparsity), by a substring of torch.cuda.get_device_name
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


@dataclass
class Setup:
    overrides: list[str]
    cfg: object
    objs: dict
    dsd: object
    device: str
    bf16: bool
    work: Path
    check_rows: list[dict]


@dataclass
class Result:
    recipe: str
    name: str
    batch: int
    checkpointing: bool
    loss: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    peak_memory_gb: float | None = None
    seconds: float | None = None
    steps: int | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the shared setup


def compose_cfg(overrides: list[str]):
    """The train app's config for these overrides, validated as ``python -m vlmqc.train`` does."""
    schema.register()
    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR)):
        cfg = compose("train", overrides=quote_numeric_options(overrides))
    cfg.paths.output_dir = str(Path.cwd())  # Hydra names the run folder only when a job starts
    return cfg, validate(cfg)


def fresh_model(s: Setup):
    """The checkpoint's initial weights with the trial's adapters, the same for every recipe: the
    adapters' init is seeded by trainer.seed, as train.py seeds it."""
    model, processor, family, _ = load(
        s.objs["model"], s.objs["image_size"], s.cfg.paths.models_dir, s.device, s.objs["data"].layout
    )
    set_seed(s.objs["trainer"].seed)
    return adapt(model, family, s.objs["lora"]), processor, family


def free() -> None:
    """Collect a finished recipe's model and optimiser (called once its function has returned, so
    no frame holds them) before the next one's peak is measured."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- the loss check


def check_loss(trainer: Trainer, collator, rows: list[dict], micro: int, bf16: bool) -> float:
    """The loss of ``rows`` through the recipe's own collator and compute_loss, in micro-batches of
    ``micro``, weighted by each micro-batch's answer tokens (what one batch of all rows gives)."""
    model = trainer.model
    model.eval()  # dropout off: the same function of the weights in every recipe
    total, tokens = 0.0, 0
    autocast = torch.autocast(trainer.args.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for i in range(0, len(rows), micro):
            batch = trainer._prepare_inputs(collator([dict(r) for r in rows[i : i + micro]]))
            n = int((batch["labels"][:, 1:] != IGNORE).sum())  # the shifted labels the causal loss averages over
            total += float(trainer.compute_loss(model, batch)) * n
            tokens += n
    model.train()
    return total / tokens


# ---------------------------------------------------------------------------- timing in this process


class Timer(TrainerCallback):
    """Time and non-padding tokens between the end of step ``warmup`` and the end of training."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            sync()
            self.start = (time.perf_counter(), state.num_input_tokens_seen)

    def on_train_end(self, args, state, control, **kwargs):
        sync()
        self.end = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)


def hf_args(args_cls, s: Setup, out: Path, batch: int, steps: int, checkpointing: bool, workers: int, **extra):
    """TrainingArguments (or TRL's SFTConfig) of a timing run: constant lr, no saving, no logging."""
    from vlmqc.training.arguments import CHECKPOINTING

    t = s.objs["trainer"]
    # TRL's config keeps the old name in every version; transformers' own depends on the version (train.CHECKPOINTING)
    name = CHECKPOINTING if args_cls is TrainingArguments else "gradient_checkpointing"
    return args_cls(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=t.lr,
        lr_scheduler_type="constant",
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=s.bf16,
        use_cpu=s.device == "cpu",
        seed=t.seed,
        save_strategy="no",
        logging_steps=10**6,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers
        > 0,  # kept between epochs, as a tuned run would: restarting them costs seconds
        remove_unused_columns=False,  # the collators need the raw rows
        include_num_input_tokens_seen="non_padding",
        **{name: checkpointing},
        **extra,
    )


def timed(trainer: Trainer, timer: Timer, r: Result, warmup: int) -> Result:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, tok0), (t1, tok1, step) = timer.start, timer.end
    r.steps, r.seconds = step - warmup, t1 - t0
    r.samples_per_second = r.steps * r.batch / r.seconds
    r.tokens_per_second = (tok1 - tok0) / r.seconds
    if torch.cuda.is_available():
        r.peak_memory_gb = torch.cuda.max_memory_allocated() / 2**30
    return r


class RecipeFailed(RuntimeError):
    """Recipe (d)'s trial failed (out of memory at this batch, say): recorded like an in-process
    recipe's out-of-memory error, and the other recipes still run."""


def hf_recipe(s: Setup, key: str, batch: int, checkpointing: bool, workers: int, args, fault: bool = False) -> Result:
    """(a) and (c): transformers' Trainer with vlmqc's Collator (the processor called per batch)."""
    model, processor, family = fresh_model(s)
    if checkpointing and not s.objs["lora"].full:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need an input that requires grad
    collator = Collator(processor, family, s.objs["prompt"], train=True, layout=s.objs["data"].layout)
    if fault:  # for the check's own test: this recipe learns the prompt too, i.e. computes something else
        collator = LearnsPrompt(collator)
    timer = Timer(args.warmup)
    r = Result(key, RECIPES[key], batch, checkpointing)
    trainer = Trainer(
        model=model,
        args=hf_args(TrainingArguments, s, s.work / key, batch, args.warmup + args.steps, checkpointing, workers),
        train_dataset=s.dsd["train"],
        data_collator=collator,
        callbacks=[timer],
    )
    r.loss = check_loss(trainer, collator, s.check_rows, min(batch, len(s.check_rows)), s.bf16)
    return timed(trainer, timer, r, args.warmup)


class LearnsPrompt:
    """A collator whose labels cover the prompt as well as the answer (``--fault``)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE
        batch["labels"] = labels
        return batch


def fits(s: Setup, batch: int, args) -> bool:
    """Whether recipe (c) trains two steps at ``batch`` without running out of GPU memory."""
    model, processor, family = fresh_model(s)
    trainer = Trainer(
        model=model,
        args=hf_args(TrainingArguments, s, s.work / "search", batch, 2, False, 0),
        train_dataset=s.dsd["train"],
        data_collator=Collator(processor, family, s.objs["prompt"], train=True, layout=s.objs["data"].layout),
    )
    try:
        trainer.train()
        ok = True
    except torch.OutOfMemoryError:
        ok = False
    return ok


def largest_batch(s: Setup, args) -> int:
    """Doubling from --min-batch until a batch runs out of memory (or --max-batch, or the train split)."""
    batch, best = args.min_batch, None
    limit = min(args.max_batch, len(s.dsd["train"]))
    while batch <= limit:
        print(f"(c) batch search: {batch} ...", flush=True)
        ok = fits(s, batch, args)
        free()
        if not ok:
            break
        best, batch = batch, batch * 2
    if best is None:
        sys.exit(f"recipe c: batch {args.min_batch} does not fit; pass a smaller --min-batch")
    return best


# ---------------------------------------------------------------------------- (b) TRL


def trl_rows(rows, prompt, layout):
    """The dataset's rows in TRL's conversational prompt-completion format with images, made on
    access (``with_transform``) with the same instruction and answer strings as vlmqc's Collator.
    A transform, not ``datasets.map``: mapping would re-encode every image before the first step."""

    def transform(batch: dict) -> dict:
        out = {"prompt": [], "completion": [], "images": []}
        for i in range(len(batch["id"])):
            row = {k: v[i] for k, v in batch.items()}
            images = row_images(row, layout)
            user = [
                *({"type": "image"} for _ in images),
                {"type": "text", "text": instruction(prompt, row["task"], len(images))},
            ]
            out["prompt"].append([{"role": "user", "content": user}])
            out["completion"].append(
                [{"role": "assistant", "content": [{"type": "text", "text": render_answer(prompt, row)}]}]
            )
            out["images"].append(images)
        return out

    return rows.with_transform(transform)


def trl_recipe(s: Setup, batch: int, checkpointing: bool, args) -> Result:
    from trl import SFTConfig, SFTTrainer

    model, processor, _ = fresh_model(s)
    data = trl_rows(s.dsd["train"], s.objs["prompt"], s.objs["data"].layout)
    timer = Timer(args.warmup)
    r = Result("b", RECIPES["b"], batch, checkpointing)
    config = hf_args(
        SFTConfig,
        s,
        s.work / "b",
        batch,
        args.warmup + args.steps,
        checkpointing,
        0,
        max_length=None,
        completion_only_loss=True,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=processor, callbacks=[timer])
    r.loss = check_loss(
        trainer,
        trainer.data_collator,
        [data[i] for i in range(len(s.check_rows))],
        min(batch, len(s.check_rows)),
        s.bf16,
    )
    return timed(trainer, timer, r, args.warmup)


# ---------------------------------------------------------------------------- (d) vlmqc


def vlmqc_loss(s: Setup, d: Setup) -> float:
    """Recipe (d)'s check: vlmqc's Collator and the Trainer as train.py builds it (its
    ``training_arguments``), from the config with --vlmqc-overrides applied (``d``)."""
    import dataclasses

    from vlmqc.training.arguments import training_arguments
    from vlmqc.training.loss import trainer_class

    model, processor, family = fresh_model(d)
    # no evaluation in the check (a recipe like experiment=base/scratch evaluates every N steps, and
    # the Trainer refuses that without an eval set); the trainer class is train.py's (trainer.loss)
    t = dataclasses.replace(d.objs["trainer"], eval_every=0)
    collator = Collator(processor, family, d.objs["prompt"], train=True, layout=d.objs["data"].layout)
    cls, _ = trainer_class(t.loss, model)
    trainer = cls(
        model=model,
        args=training_arguments(t, d.work / "d-check", d.device),
        train_dataset=d.dsd["train"],
        data_collator=collator,
    )
    return check_loss(trainer, collator, s.check_rows, min(t.batch_size, len(s.check_rows)), s.bf16)


def vlmqc_recipe(s: Setup, d: Setup, args) -> Result:
    """``python -m vlmqc.train`` with the same overrides; its figures from its own metrics.jsonl."""
    t = d.objs["trainer"]
    r = Result("d", RECIPES["d"], t.batch_size, t.gradient_checkpointing)
    r.loss = vlmqc_loss(s, d)
    free()
    run_dir = s.work / "d"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh trial, not a resumed or completed one
    steps = args.warmup + args.steps
    cmd = [
        sys.executable, "-m", "vlmqc.train", f"hydra.run.dir={run_dir}", *d.overrides,
        "logger=none", "trainer.eval_before=false", "trainer.eval_every=0", f"trainer.max_steps={steps}",
        f"trainer.logging_steps={args.log_every}", "trainer.save_steps=100000", "trainer.eval_limit=2",
        "trainer.samples=0", "trainer.max_new_tokens=4",
    ]  # fmt: skip
    print("$", shlex.join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    (s.work / "d.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RecipeFailed(
            f"python -m vlmqc.train failed ({out.returncode}), log in "
            f"{s.work / 'd.log'}:\n{(out.stdout + out.stderr)[-3000:]}"
        )
    rows, problems = read_metrics(run_dir / "metrics.jsonl")
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    # an interval of logging_steps ends at each logged step; those starting at or after the warm-up count
    seconds = samples = tokens = 0.0
    for row in rows:
        step, sps = row.get("trainer/global_step"), row.get("train/samples_per_second")
        if sps and step - args.log_every >= args.warmup:
            dt = args.log_every * t.batch_size * t.grad_accum / sps
            seconds, samples, tokens = (
                seconds + dt,
                samples + args.log_every * t.batch_size * t.grad_accum,
                tokens + row["train/tokens_per_second"] * dt,
            )
    if not seconds:
        sys.exit(
            f"recipe d: no logged interval after step {args.warmup} in {run_dir / 'metrics.jsonl'}; raise --steps "
            f"or lower --log-every"
        )
    r.seconds, r.steps = seconds, round(samples / (t.batch_size * t.grad_accum))
    r.samples_per_second, r.tokens_per_second = samples / seconds, tokens / seconds
    peaks = [row["train/peak_gpu_memory_gb"] for row in rows if "train/peak_gpu_memory_gb" in row]
    r.peak_memory_gb = max(peaks) if peaks else None
    r.notes.append(f"overrides: {' '.join(args.vlmqc_overrides) or '(none)'}")
    return r


# ---------------------------------------------------------------------------- model FLOPs


def reference(s: Setup) -> tuple[float, float]:
    """(training model FLOPs per non-padding token, the check rows' loss), one row at a time.

    The FLOPs as the module docstring says: linear layers by forward hooks, the language model's
    attention by formula. The loss is what every recipe must reproduce: the model's own loss on
    vlmqc's answer-only labels, token-weighted over the rows (one batch of them, without padding)."""
    model, processor, family = fresh_model(s)
    model.to(s.device).eval()
    collator = Collator(processor, family, s.objs["prompt"], train=True, layout=s.objs["data"].layout)
    state = {"trainable_seen": False, "flops": 0.0}
    upstream = {}  # per linear layer: whether a trainable weight ran before it (its input needs a gradient)

    def pre(module, _inputs):
        upstream[module] = state[
            "trainable_seen"
        ]  # read before its own weight counts: a layer is not upstream of itself
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            state["trainable_seen"] = True

    def linear(module, inputs, _output):
        rows = inputs[0].numel() // module.in_features
        fwd = 2.0 * rows * module.in_features * module.out_features
        state["flops"] += fwd * (1 + upstream[module] + module.weight.requires_grad)

    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(pre))
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear))
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    layers, width = text.num_hidden_layers, heads * (getattr(text, "head_dim", None) or text.hidden_size // heads)
    total, tokens, loss, answer = 0.0, 0, 0.0, 0
    autocast = torch.autocast(s.device, dtype=torch.bfloat16) if s.bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for row in s.check_rows:
            state.update(trainable_seen=False, flops=0.0)
            batch = {k: v.to(s.device) if torch.is_tensor(v) else v for k, v in collator([dict(row)]).items()}
            n, a = int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != IGNORE).sum())
            loss += float(model(**batch).loss) * a
            total += state["flops"] + 3 * 4 * layers * n * n * width
            tokens, answer = tokens + n, answer + a
    for h in hooks:
        h.remove()
    return total / tokens, loss / answer


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS if k in name), None)


# ---------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--recipes", default="a,b,c,d", help="which of a (notebook), b (trl), c (hf-tuned), d (vlmqc); comma-separated"
    )
    ap.add_argument("--steps", type=int, default=20, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=3, help="steps before timing starts (>= 1)")
    ap.add_argument("--check", type=int, default=8, help="rows of the loss check")
    ap.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="loss check tolerance, relative to the reference loss (bf16: 2e-2, fp32: 1e-4)",
    )
    ap.add_argument("--batch", type=int, default=None, help="recipe c's batch (default: the doubling search)")
    ap.add_argument("--min-batch", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--trl-batch", type=int, default=None, help="recipe b's batch (default: recipe c's)")
    ap.add_argument("--trl-checkpointing", choices=("on", "off"), default="on", help="TRL's default is on")
    ap.add_argument(
        "--workers", type=int, default=None, help="recipe c's dataloader workers (default: 4 on a GPU, 0 on the CPU)"
    )
    ap.add_argument("--vlmqc-overrides", default="", help="extra overrides for recipe d only, quoted: its speed levers")
    ap.add_argument("--log-every", type=int, default=None, help="recipe d's trainer.logging_steps (default: --warmup)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense peak for MFU (default: from its name)"
    )
    ap.add_argument(
        "--fault", choices=tuple(RECIPES), default=None, help=argparse.SUPPRESS
    )  # the check's test: that recipe learns the prompt too
    ap.add_argument(
        "--fault-oom", choices=tuple(RECIPES), default=None, help=argparse.SUPPRESS
    )  # tests: that recipe runs out of memory (a CPU cannot)
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for report.json and the runs (default: a temporary one)"
    )
    ap.add_argument("overrides", nargs="*", help="vlmqc overrides for every recipe (after --)")
    args = ap.parse_args(argv)
    args.recipes = parse_recipes(ap, args.recipes)
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1")
    if args.fault not in (None, "a", "c"):
        ap.error("--fault: a or c")
    args.vlmqc_overrides = shlex.split(args.vlmqc_overrides)
    args.log_every = args.log_every or args.warmup
    return args


def table(results: list[Result], flops: float | None, peak: float | None) -> str:
    head = (
        f"{'recipe':<12} {'batch':>5} {'ckpt':>4} {'loss':>10} {'samples/s':>10} {'tokens/s':>10} "
        f"{'peak GiB':>9} {'MFU':>6} {'x (c)':>6} {'x (b)':>6}"
    )
    lines = [head, "-" * len(head)]
    by = {r.recipe: r for r in results}
    for r in results:
        mfu = f"{flops * r.tokens_per_second / (peak * 1e12):.1%}" if flops and peak and r.tokens_per_second else "-"
        ratio = {k: f"{r.samples_per_second / by[k].samples_per_second:.2f}" if k in by else "-" for k in ("c", "b")}
        mem = f"{r.peak_memory_gb:.2f}" if r.peak_memory_gb is not None else "-"
        lines.append(
            f"{r.recipe} {r.name:<10} {r.batch:>5} {'on' if r.checkpointing else 'off':>4} {r.loss:>10.6f} "
            f"{r.samples_per_second:>10.2f} "
            f"{r.tokens_per_second:>10.1f} {mem:>9} {mfu:>6} {ratio['c']:>6} {ratio['b']:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    overrides = [
        *args.overrides,
        *([] if any(o.startswith("trainer.device=") for o in args.overrides) else [f"trainer.device={device}"]),
    ]
    try:
        cfg, objs = compose_cfg(overrides)
        d_cfg, d_objs = compose_cfg([*overrides, *args.vlmqc_overrides]) if "d" in args.recipes else (cfg, objs)
    except schema.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from vlmqc.models import resolve_dtype
    from vlmqc.training.arguments import training_arguments

    bf16 = training_arguments(
        objs["trainer"], Path(tempfile.gettempdir()), device
    ).bf16  # trainer.precision as a trial resolves it
    if bf16 and resolve_dtype(objs["model"].dtype, device) is torch.float32:
        print("note: bf16 autocast over fp32 weights (model.dtype)", file=sys.stderr)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_train-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dsd, _ = get_dataset(objs["data"], cfg.paths.cache_dir, num_workers=cfg.num_workers)
    check_rows = [dsd["train"][i] for i in range(min(args.check, len(dsd["train"])))]
    s = Setup(overrides, cfg, objs, dsd, device, bf16, work, check_rows)
    d = Setup([*overrides, *args.vlmqc_overrides], d_cfg, d_objs, dsd, device, bf16, work, check_rows)
    set_seed(objs["trainer"].seed)
    workers = args.workers if args.workers is not None else (4 if device == "cuda" else 0)

    print(
        f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}, "
        f"{'bf16' if bf16 else 'fp32'}, overrides: {' '.join(overrides)}",
        flush=True,
    )
    flops, ref = reference(s)
    free()
    results, failed = [], {}
    batch_c = None
    for key in sorted(args.recipes, key=lambda k: "cabd".index(k)):  # c first: b takes its batch
        started = time.perf_counter()
        try:
            if key == "c":
                batch_c = args.batch or (largest_batch(s, args) if device == "cuda" else objs["trainer"].batch_size)
            if args.fault_oom == key:
                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: --fault-oom {key})")
            if key == "a":
                r = hf_recipe(s, "a", 1, True, 0, args, fault=args.fault == "a")
            elif key == "c":
                r = hf_recipe(s, "c", batch_c, False, workers, args, fault=args.fault == "c")
            elif key == "b":
                r = trl_recipe(
                    s,
                    args.trl_batch or batch_c or args.batch or objs["trainer"].batch_size,
                    args.trl_checkpointing == "on",
                    args,
                )
            else:
                r = vlmqc_recipe(s, d, args)
        except (torch.OutOfMemoryError, RecipeFailed) as e:
            # a recipe that does not fit this batch (the point of a batch-size sweep) is a figure too:
            # recorded, and the other recipes still run; the exit status says one failed
            failed[key] = f"{type(e).__name__}: {e}"
            print(
                f"({key}) {RECIPES[key]}: FAILED ({time.perf_counter() - started:.0f} s): "
                f"{failed[key].splitlines()[0][:300]}",
                flush=True,
            )
        else:
            print(
                f"({key}) {r.name}: loss {r.loss:.6f}, {r.samples_per_second:.2f} samples/s "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            results.append(r)
        # outside the except block, whose exception holds the failed recipe's frames (its model) until the block
        # ends
        free()
    results.sort(key=lambda r: r.recipe)

    rtol = args.rtol if args.rtol is not None else (2e-2 if bf16 else 1e-4)
    wrong = [r for r in results if abs(r.loss - ref) > rtol * abs(ref)]
    peak = peak_tflops(args)
    print()
    print(table(results, flops, peak))
    print(
        f"\nloss check: the first {len(check_rows)} training rows from the initial weights, each recipe's own "
        f"collator and loss; "
        f"reference {ref:.6f} (the model's own loss on vlmqc's answer-only labels, row by row), tolerance "
        f"{rtol:g} relative: "
        f"{'FAILED: ' + ', '.join(f'({r.recipe}) {r.loss:.6f}' for r in wrong) if wrong else 'all agree'}"
    )
    print(
        f"MFU = model FLOPs per token ({flops / 1e9:.3f} GFLOP, counted on the check rows: linear layers' forward "
        f"2*in*out per row, as much again for "
        "activation gradients after the first trainable layer and again for trainable weights' gradients; "
        "language attention 12*L*s^2*d) x tokens/s / peak "
        f"({peak or 'unknown'} TFLOP/s{'' if peak else '; --peak-tflops to give it'})"
    )
    for r in results:
        for n in r.notes:
            print(f"({r.recipe}) {n}")
    for key, why in failed.items():
        print(f"({key}) {RECIPES[key]} FAILED: {why}")
    report = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "overrides": overrides,
        "vlmqc_overrides": args.vlmqc_overrides,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "precision": "bf16" if bf16 else "fp32",
        "warmup_steps": args.warmup,
        "versions": versions(),
        "flops_per_token": flops,
        "peak_tflops": peak,
        "loss_check": {
            "rows": len(check_rows),
            "reference": ref,
            "rtol": rtol,
            "passed": not wrong,
            "failed": [r.recipe for r in wrong],
        },
        "recipes": {
            r.recipe: {
                **{k: v for k, v in vars(r).items() if k != "recipe"},
                "mfu": flops * r.tokens_per_second / (peak * 1e12) if peak else None,
                "vs_c": r.samples_per_second
                / next((x.samples_per_second for x in results if x.recipe == "c"), math.nan),
                "vs_b": r.samples_per_second
                / next((x.samples_per_second for x in results if x.recipe == "b"), math.nan),
            }
            for r in results
        },
        "failed_recipes": failed,  # recipe -> its error (out of memory, its trial failed); not in "recipes"
    }
    tmp = work / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, work / "report.json")
    print(f"\n{work / 'report.json'}")
    return 1 if wrong or failed else 0


def versions() -> dict:
    import peft
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    with contextlib.suppress(ImportError):
        import trl

        out["trl"] = trl.__version__
    return out


if __name__ == "__main__":
    sys.exit(main())
