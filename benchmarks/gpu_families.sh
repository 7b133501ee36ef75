#!/usr/bin/env bash
# Every model family's tiny tests and vlmqc.inspect on every preset, on the GPU machine: its
# transformers (5.17 where this was written; 5.24 on the CPU machine) with torchvision installed,
# which the CPU machine cannot have. There transformers picks torchvision-backed ("fast") image
# processors where a family has one, and the phi4_multimodal family (whose image processor exists
# only with torchvision) runs instead of skipping. Everything runs on the CPU of that machine; the
# GPU is not needed, only its software.
#
# From the repository root on the GPU machine (wheels of hydra-core, wandb, datasets in .whl/):
#
#   python3 -m pip install -q --no-index --find-links .whl hydra-core wandb datasets && export PYTHONPATH=$PWD && bash benchmarks/gpu_families.sh
#
# Writes to $OUT (default outputs/gpu_families/): versions.txt (the packages it ran under),
# pytest.xml (JUnit) and pytest.log (every test, skip reasons, failures, the slowest), inspect.log
# (each preset's table or error, with its exit status). Exit status: 0 if every test passed and every
# preset was inspected, else 1. About 4 minutes on 16 cores with pytest-xdist (present in that
# machine's image); without it, the golden smoke tests and the inspect-agreement tests alone, serially.
set -uo pipefail
out=${OUT:-outputs/gpu_families}
mkdir -p "$out"
start=$SECONDS
# cold caches, as CI's: no warm dataset or model hides what a fresh machine would meet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export VLMQC_CACHE_DIR=$tmp/vlmqc HF_HOME=$tmp/hf XDG_CACHE_HOME=$tmp/xdg MPLCONFIGDIR=$tmp/mpl
export WANDB_DIR=$tmp/wandb WANDB_CACHE_DIR=$tmp/wandb-cache WANDB_CONFIG_DIR=$tmp/wandb-config WANDB_MODE=offline WANDB_SILENT=true
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

python3 - >"$out/versions.txt" 2>&1 <<'EOF'
import importlib.metadata as md, platform, os
print("python", platform.python_version(), "cores", os.cpu_count())
for p in ("torch", "torchvision", "transformers", "peft", "accelerate", "tokenizers", "huggingface-hub", "datasets", "hydra-core", "wandb", "pillow", "pytest", "pytest-xdist", "pytest-timeout"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "MISSING")
EOF
cat "$out/versions.txt"

# the golden smoke test of every family, the family files (processor facts, offline processors,
# label masks), and inspect's numbers against the real processors
golden=(tests/test_models.py tests/test_phi4_multimodal.py tests/test_phi3_v.py
        "tests/test_inspect.py::test_numbers_agree_with_the_real_processor_on_the_tiny_models"
        "tests/test_inspect.py::test_qwen2_vl_numbers_follow_the_published_resize_formula"
        "tests/test_inspect.py::test_llava_1_5_offline_is_336_pixels_and_576_tokens_and_refuses_another_size")
families=(tests/test_gemma3.py tests/test_idefics3.py tests/test_internvl.py tests/test_llava_onevision.py tests/test_paligemma.py
          tests/test_qwen_vl.py tests/test_qwen2_vl.py)
if python3 -c "import xdist" 2>/dev/null; then
  # 8 workers of 2 threads each on 16 cores; a worker builds the tiny models its tests use
  export OMP_NUM_THREADS=2
  set -- "${golden[@]}" "${families[@]}" -n 8 -m "not slow"
else
  echo "pytest-xdist missing: the golden and inspect-agreement tests alone, serially"
  set -- "${golden[@]}"
fi
python3 -m pytest "$@" -rA --durations=15 --junitxml="$out/pytest.xml" -p no:cacheprovider 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}
echo "pytest: exit $tests_rc after $((SECONDS - start)) s"

# python -m vlmqc.inspect on every preset, every image_size option, one pair example each.
# qwen2_vl_2b_random is left out: it would build Qwen2-VL-2B's full shape (4.4 GB of random weights)
# per size; its processor is qwen2_vl_2b's, inspected here offline.
small=(data=pair_round data.train_size=8 data.test_size=4 examples=1 num_workers=1)
python3 -m vlmqc.inspect model=tiny "${small[@]}" >/dev/null 2>&1  # builds the dataset once, before the parallel runs share it
presets=$(ls conf/model/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | grep -vx qwen2_vl_2b_random)
inspect_one() {
  local log
  log=$(python3 -m vlmqc.inspect "model=$1" "${@:2}" 2>&1)
  local rc=$?
  printf '==== model=%s: exit %s\n%s\n\n' "$1" "$rc" "$log"
  return $rc
}
export -f inspect_one
printf '%s\n' $presets | OMP_NUM_THREADS=2 xargs -P 8 -I{} bash -c 'inspect_one "$@"' _ {} "${small[@]}" >"$out/inspect.log"
inspect_rc=$?
grep '^==== ' "$out/inspect.log"
echo "inspect: exit $inspect_rc; total $((SECONDS - start)) s"
[ "$tests_rc" -eq 0 ] && [ "$inspect_rc" -eq 0 ]
