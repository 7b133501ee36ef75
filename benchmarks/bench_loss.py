"""Step time and peak memory of ``trainer.loss=full`` against ``answer_only`` (vlmqc/loss.py).

    python benchmarks/bench_loss.py                                   # tiny, scratch and a 151,936-token Qwen2-VL, CPU
    python benchmarks/bench_loss.py --models qwen2_vl_2b_random --device cuda --batch 8 --steps 10

A training step as the Trainer runs it (its ``compute_loss`` with ``num_items_in_batch``, then
backward) on a real collated batch of pair examples (prompt ``long``, LoRA r16 unless ``--full``),
each model and mode in a fresh process so that its peak resident memory (CPU) or peak allocated
GPU memory is its own. On a CPU shared with other work, ``cpu speed-up`` (this process's CPU
seconds) is the steadier figure; wall time is the GPU's. ``qwen_vocab`` is Qwen2-VL's shape shrunk to a CPU (2
layers, 256 wide)
with its real vocabulary, 151,936: the case where the logits dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": ["model=tiny"],
    "scratch": ["model=scratch"],
    "qwen_vocab": ["model=qwen2_vl_2b_random"]
    + [
        f"model.qwen2_vl.{k}={v}"
        for k, v in {
            "text.hidden_size": 256,
            "text.num_hidden_layers": 2,
            "text.num_attention_heads": 4,
            "text.num_key_value_heads": 2,
            "text.intermediate_size": 512,
            "text.vocab_size": 151936,
            "text.mrope_section": "[8,12,12]",
            "vision.depth": 2,
            "vision.embed_dim": 64,
            "vision.num_heads": 2,
        }.items()
    ],
    "qwen2_vl_2b_random": ["model=qwen2_vl_2b_random"],
}


def pair_row(i: int) -> dict:
    """A pair example as the dataset gives it (a plain image of the stacked pair's size), every other one defective."""
    from PIL import Image

    defects = [{"position": "C5", "type": "missing"}] if i % 2 else []
    return {
        "id": f"b-{i}",
        "task": "pair",
        "image": Image.new("RGB", (448, 386), (120, 130, 140)),
        "verdict": "defective" if defects else "pass",
        "defects": defects,
        "target": "",
        "answer": "",
    }


def one(args) -> dict:
    """One model and mode, in this process: the mean step time and the peak memory."""
    import torch
    from hydra import compose, initialize_config_dir
    from transformers import Trainer, TrainingArguments

    from vlmqc.collate import Collator
    from vlmqc.config import CONF_DIR, ImageSizeConfig, register, to_object
    from vlmqc.models import adapt, load
    from vlmqc.training.loss import AnswerOnlyTrainer

    register()

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[*MODELS[args.model], "lora=full" if args.full else "lora=r16", "prompt=long"])
    model, processor, family, _ = load(
        to_object(cfg.model, "model"), ImageSizeConfig(name="native"), args.models_dir, args.device
    )
    model = adapt(model.to(args.device), family, to_object(cfg.lora, "lora"))
    rows = [pair_row(i) for i in range(args.batch)]
    batch = Collator(processor, family, to_object(cfg.prompt, "prompt"), train=True)(rows)
    batch = {k: v.to(args.device) for k, v in batch.items()}
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            use_cpu=args.device == "cpu",
            report_to="none",
            remove_unused_columns=False,
            label_names=["labels"],
        )
        trainer = (AnswerOnlyTrainer if args.mode == "answer_only" else Trainer)(model=model, args=targs)
    items = (batch["labels"][:, 1:] != -100).sum()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    times, cpu = [], []
    for step in range(args.steps + 1):  # the first is a warm-up
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.compute_loss(model, batch, num_items_in_batch=items).backward()
        model.zero_grad(set_to_none=True)
        sync()
        if step:
            times.append(time.perf_counter() - t0)
            cpu.append(
                time.process_time() - c0
            )  # this process's CPU seconds: steadier than wall time on a shared machine
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "step_s": sum(times) / len(times),
        "cpu_s": sum(cpu) / len(cpu),
        "peak_mib": peak,
        "sequence": batch["input_ids"].shape[1],
        "answer_tokens": int(items) / args.batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "scratch", "qwen_vocab"], choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16")
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/vlmqc/models"))
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        args.model, args.mode = args.one
        print(json.dumps(one(args)))
        return
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}, batch "
        f"{args.batch}, {'full' if args.full else 'LoRA r16'}"
    )
    print(
        f"{'model':<20} {'seq':>5} {'answer':>6} {'full_s':>8} {'answer_only_s':>13} {'speed-up':>8} "
        f"{'cpu speed-up':>12} {'full_MiB':>9} {'answer_only_MiB':>15} {'mem ratio':>9}"
    )
    for model in args.models:
        res = {}
        for mode in ("full", "answer_only"):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                model,
                mode,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--device",
                args.device,
                "--models-dir",
                args.models_dir,
            ]
            out = subprocess.run(
                cmd + (["--full"] if args.full else []), capture_output=True, text=True, check=True
            ).stdout
            res[mode] = json.loads(out.strip().splitlines()[-1])
        f, a = res["full"], res["answer_only"]
        print(
            f"{model:<20} {f['sequence']:>5} {f['answer_tokens']:>6.1f} {f['step_s']:>8.3f} {a['step_s']:>13.3f} "
            f"{f['step_s'] / a['step_s']:>7.2f}x {f['cpu_s'] / a['cpu_s']:>11.2f}x "
            f"{f['peak_mib']:>9.0f} {a['peak_mib']:>15.0f} {a['peak_mib'] / f['peak_mib']:>9.2f}"
        )


if __name__ == "__main__":
    main()
