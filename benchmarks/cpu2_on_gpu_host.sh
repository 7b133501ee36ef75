#!/usr/bin/env bash
# Issue 21's two timings on a quiet 2-core machine: the lent GPU host pinned to two cores, its GPU
# hidden, caches empty. The dev machine and CI are 2-core CPU machines too, but shared with other work.
#   bash benchmarks/cpu2_on_gpu_host.sh     # writes $OUT/first_run.txt, $OUT/bench_data_2cores.txt, $OUT/fast_tier.txt
set -uo pipefail
python3 -c "import hydra, wandb, datasets, flask" 2>/dev/null || python3 -m pip install -q --no-index --find-links .whl hydra-core wandb datasets flask >/dev/null 2>&1 || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES="" WANDB_SILENT=true
unset OMP_NUM_THREADS
cold() { local c; c=$(mktemp -d); export VLMQC_CACHE_DIR=$c/v HF_HOME=$c/hf XDG_CACHE_HOME=$c/x MPLCONFIGDIR=$c/m WANDB_DIR=$c/w WANDB_CACHE_DIR=$c/wc WANDB_CONFIG_DIR=$c/wf; }
work=$(mktemp -d)
cold
( cd "$work" && /usr/bin/time -f "first run: %e s wall, %U s user, %S s sys" taskset -c 0,1 python3 -m vlmqc train experiment=first_run ) 2>&1 \
  | tr '\r' '\n' | grep -v "^evaluating\|^training\|^generating\|^encoding" | tail -8 | tee "$OUT/first_run.txt"
python3 - "$work" <<'PY' | tee -a "$OUT/first_run.txt"
import json, sys, pathlib
s = json.loads(next(pathlib.Path(sys.argv[1], "outputs", "runs").glob("*/summary.json")).read_text())
print("status", s["status"], "runtime_seconds", s["runtime_seconds"], "final", {k: round(v, 3) for k, v in s["final"].items() if isinstance(v, float)})
PY
cold
taskset -c 0,1 python3 benchmarks/bench_data.py --examples 1000 --workers 1 2 2>&1 | grep -v "Loading weights\|Writing model" | tee "$OUT/bench_data_2cores.txt"
cold
# written as it goes (a call cut by its limit still shows how far the tier got)
start=$(date +%s)
taskset -c 0,1 python3 -m pytest -q -p no:cacheprovider --durations=15 > "$OUT/fast_tier.txt" 2>&1
echo "fast tier: $(( $(date +%s) - start )) s wall" | tee -a "$OUT/fast_tier.txt"
tail -25 "$OUT/fast_tier.txt"
