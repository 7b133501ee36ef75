"""Training step time with and without the vision feature cache (trainer.vision_cache, vlmqc/features.py).

    python benchmarks/bench_features.py                          # a Qwen2-VL-2B scaled down 2x in width, 4x in
        depth, CPU
    python benchmarks/bench_features.py --image-size 448 --batch 4 --steps 5 --device cuda
    python benchmarks/bench_features.py --full                   # Qwen2-VL-2B's own shape (random bf16 weights; a GPU)

One LoRA step (lora=r8 on the language model: forward, backward) on a batch of pair images, in
three ways: ``off`` (the tower runs with autograd, as transformers runs it), ``miss`` (the cache
on, every image new: the tower runs without autograd and its features are stored) and ``hit``
(every image cached: the tower does not run). The scaled shape keeps the 2B model's ratio of
vision to language work per sample (tower and language model shrunk alike), so the fraction
saved is what to expect there; the seconds are this machine's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from vlmqc import features
from vlmqc.collate import Collator
from vlmqc.config import CONF_DIR, ImageSizeConfig, LoraConfig, register, to_object
from vlmqc.models import adapt, load

CONF = str(CONF_DIR)
# Qwen2-VL-2B: vision 32 x 1280, text 28 x 1536; here half the width, a quarter of the depth, a small vocabulary
SCALED = [
    "model.qwen2_vl.vision.depth=8",
    "model.qwen2_vl.vision.embed_dim=640",
    "model.qwen2_vl.vision.num_heads=8",
    "model.qwen2_vl.text.hidden_size=768",
    "model.qwen2_vl.text.num_hidden_layers=7",
    "model.qwen2_vl.text.num_attention_heads=6",
    "model.qwen2_vl.text.intermediate_size=4480",
    "model.qwen2_vl.text.vocab_size=4096",
]


def rows(n: int, seed: int) -> list[dict]:
    """Pair examples of the study's size (448 x 386), each image its own noise: no two alike."""
    rng = np.random.default_rng(seed)
    return [
        {"id": f"b{seed}-{i}", "task": "pair", "verdict": "defective", "target": "", "answer": "",
         "image": Image.fromarray((rng.random((386, 448, 3)) * 255).astype("uint8")),
         "defects": [{"position": "C5", "type": "missing"}]}
        for i in range(n)
    ]  # fmt: skip


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def step_time(model, batch: dict, device: str) -> float:
    seconds = timed(
        lambda: model(
            **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        ).loss.backward(),
        device,
    )
    model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--image-size", default="native", help="an image_size option (native: the preset's 448 x 448 budget)"
    )
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--full", action="store_true", help="Qwen2-VL-2B's own shape instead of the scaled one")
    ap.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "vlmqc-bench-models"))
    args = ap.parse_args()
    register()
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose(
            "train",
            overrides=[
                "model=qwen2_vl_2b_random",
                f"image_size='{args.image_size}'",
                "prompt=short",
                *([] if args.full else SCALED),
            ],
        )
    model_cfg, size, prompt = (
        to_object(cfg.model, "model"),
        to_object(cfg.image_size, "image_size"),
        to_object(cfg.prompt, "prompt"),
    )
    model, processor, family, _ = load(
        model_cfg, ImageSizeConfig(name=size.name, size=size.size), args.models_dir, args.device
    )
    torch.manual_seed(0)
    model = adapt(model, family, LoraConfig(name="r8", r=8, alpha=16, dropout=0.0)).to(args.device)
    model.train()
    collate = Collator(processor, family, prompt, train=True, image_keys=True)
    batches = [collate(rows(args.batch, seed)) for seed in range(args.steps + 1)]
    vision = sum(p.numel() for n, p in model.named_parameters() if family.part(n) in ("vision", "projector"))
    total = sum(p.numel() for p in model.parameters())
    tokens = int(batches[0]["attention_mask"].sum()) // args.batch
    image_tokens = int((batches[0]["input_ids"] == model.config.image_token_id).sum()) // args.batch
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))  # fmt: skip
    print(f"# {'Qwen2-VL-2B shape' if args.full else 'Qwen2-VL-2B scaled'}: {total / 1e6:.1f} M parameters, image "
        f"path {vision / 1e6:.1f} M; "
          f"batch {args.batch}, {tokens} tokens a sample ({image_tokens} image tokens), {model.dtype}")  # fmt: skip

    precision = "bf16" if model.dtype == torch.bfloat16 else "fp32"
    with tempfile.TemporaryDirectory() as folder:
        features.enable(model, family, processor, "memory", folder, precision, args.device)
        # a batch without keys takes transformers' own path (off); the modes alternate step by step,
        # so a machine whose load changes (shared cores) weighs on each alike
        step_time(model, {k: v for k, v in batches[0].items() if k != features.KEY}, args.device)  # warm-up
        step_time(model, batches[0], args.device)  # the first call with keys runs the tower with autograd, as the check
        off, miss, hit = [], [], []
        for b in batches[1:]:
            off.append(step_time(model, {k: v for k, v in b.items() if k != features.KEY}, args.device))
            miss.append(step_time(model, b, args.device))
            hit.append(step_time(model, b, args.device))
    # the tower alone: a frozen tower records no graph even with autograd on (nothing in it requires
    # grad), so without autograd it costs about the same; the step's saving is the hits' skipped tower
    inner = model.get_base_model().model
    pixels, grid = batches[1]["pixel_values"].to(args.device), batches[1]["image_grid_thw"].to(args.device)
    tower = {}
    for name, mode in (("autograd", torch.enable_grad), ("no_grad", torch.no_grad)):
        with mode():
            tower[name] = statistics.median(
                timed(lambda: inner.get_image_features(pixels, grid), args.device) for _ in range(3)
            )
    print(
        f"# the image path alone on one batch: {tower['autograd']:.3f} s with autograd on, {tower['no_grad']:.3f} "
        f"s without"
    )
    print(f"{'mode':<6} {'step_s (median)':>15} {'vs off':>7}")
    base = statistics.median(off)
    for name, times in (("off", off), ("miss", miss), ("hit", hit)):
        print(f"{name:<6} {statistics.median(times):>15.3f} {statistics.median(times) / base:>7.2f}")


if __name__ == "__main__":
    main()
