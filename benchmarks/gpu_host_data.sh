#!/usr/bin/env bash
# Issue 21 on the lent GPU host (16 cores), default thread settings (no OMP_NUM_THREADS):
#   1. benchmarks/bench_data.py: drawing and encoding throughput against workers, 1 to the core count;
#   2. experiment=base/scratch as a user runs it: 20,300 star examples drawn and 20,000 encoded by the
#      trial itself (facts.preprocess.seconds), a few steps of training on the GPU.
# Run from the repository root on the device machine, with the wheels of ../shared/device/wheels.sh in .whl:
#   bash benchmarks/gpu_host_data.sh            # writes $OUT/bench_data.txt, $OUT/scratch_trial.txt
set -uo pipefail
python3 -c "import hydra, wandb, datasets, flask" 2>/dev/null || python3 -m pip install -q --no-index --find-links .whl hydra-core wandb datasets flask >/dev/null 2>&1 || exit 1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 VLMQC_CACHE_DIR=/tmp/vlmqc-cache WANDB_MODE=offline
unset OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
nproc | tee -a "$OUT/device.txt"
[ -n "${SKIP_BENCH:-}" ] || python3 benchmarks/bench_data.py --examples 3000 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/bench_data.txt"
start=$(date +%s)
python3 -m vlmqc.train experiment=base/scratch logger=none trainer.max_steps=50 trainer.eval_before=false trainer.eval_limit=64 \
  trainer.samples=0 "hydra.run.dir=/tmp/scratch-run" 2>&1 | tr '\r' '\n' | grep -v "^evaluating\|^training\|^generating\|^encoding" | tail -20 | tee "$OUT/scratch_trial.txt"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/scratch_trial.txt"
python3 - <<'PY' | tee -a "$OUT/scratch_trial.txt"
import json
s = json.load(open("/tmp/scratch-run/summary.json"))
p = s["facts"]["preprocess"]
info = json.load(open(s["facts"]["dataset_path"] + "/vlmqc.json"))
print(f"status {s['status']}; drawn {info['examples']} in {info['build_seconds']} s; encoded {p['examples']} in {p['seconds']} s ({p['examples'] / p['seconds']:.0f}/s), reused={p['reused']}")
PY
