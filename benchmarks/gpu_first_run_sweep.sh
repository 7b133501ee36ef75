#!/usr/bin/env bash
# Issue 21, the first run's recipe: how many steps each candidate needs to leave the star plateau,
# measured on the lent GPU (steps and samples do not depend on the device; the 2-core CPU's time per
# step is measured there). Twelve trials at once on one GPU, fp32, a constant learning rate after
# warm-up, position accuracy on 200 test rows every 100 steps. Writes $OUT/recipes.txt and recipes.tgz.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 VLMQC_CACHE_DIR=/tmp/vlmqc-cache WANDB_MODE=offline OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/out}
BASE=(model=scratch lora=full lora.train_vision=true prompt=short data.render.width=160 data.train_size=3000 data.test_size=300
      model.tiny.native_size=64 model.tiny.patch_size=16 model.tiny.vision_hidden=128 model.tiny.vision_layers=2 model.tiny.text_hidden=128
      model.tiny.text_layers=2 model.tiny.init_std=0.1 trainer.lr=1e-3 trainer.batch_size=16 trainer.lr_schedule=constant_with_warmup
      trainer.warmup_ratio=0.05 trainer.max_steps=1500 trainer.eval_every=100 trainer.eval_limit=300 trainer.samples=0 trainer.save_steps=100000
      trainer.precision=fp32 trainer.preprocess=once logger=none num_workers=2)
python3 -m vlmqc.data data=star data.render.width=160 data.train_size=3000 data.test_size=300 num_workers=16 baseline=false >/dev/null 2>&1
# the candidates: $1 names a file of "name overrides..." lines (default: the first round below)
declare -A C=()
if [ -n "${1:-}" ]; then
  while read -r name rest; do [ -n "$name" ] && C[$name]="$rest"; done < "$1"
else
  C=(
    [c01_base]=""
    [c02_init02]="model.tiny.init_std=0.2"
    [c03_init03]="model.tiny.init_std=0.3"
    [c04_lr2e3]="trainer.lr=2e-3"
    [c05_lr5e4]="trainer.lr=5e-4"
    [c06_b8]="trainer.batch_size=8"
    [c07_b32]="trainer.batch_size=32"
    [c08_96px]="model.tiny.native_size=96"
    [c09_h64]="model.tiny.vision_hidden=64 model.tiny.text_hidden=64"
    [c10_1layer]="model.tiny.vision_layers=1 model.tiny.text_layers=1"
    [c11_init02_lr2e3]="model.tiny.init_std=0.2 trainer.lr=2e-3"
    [c12_nowarm]="trainer.warmup_ratio=0"
  )
fi
rm -rf /tmp/recipes; mkdir -p /tmp/recipes
for name in "${!C[@]}"; do
  python3 -m vlmqc.train "${BASE[@]}" ${C[$name]} hydra.run.dir=/tmp/recipes/$name > /tmp/recipes/$name.log 2>&1 &
done
wait
python3 - <<'PY' | tee "$OUT/recipes.txt"
import json, pathlib
for d in sorted(pathlib.Path("/tmp/recipes").iterdir()):
    if not d.is_dir():
        continue
    rows = [json.loads(l) for l in open(d / "metrics.jsonl")] if (d / "metrics.jsonl").exists() else []
    acc = [(r["trainer/global_step"], round(r["eval/position_accuracy"], 3)) for r in rows if "eval/position_accuracy" in r]
    first = next((s for s, a in acc if a >= 0.5), None)
    print(f"{d.name:<20} first>=0.5 at step {first}; {acc}")
PY
tar czf "$OUT/recipes.tgz" -C /tmp $(cd /tmp && ls -d recipes/*/metrics.jsonl)
