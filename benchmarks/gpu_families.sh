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
# preset was inspected (a processor missing a package counts as not inspected), else 1. Meant to end
# within 4 minutes on 16 cores: six pytest processes of 2 threads side by side (pytest-xdist is not
# needed), then 8 inspect processes. Measured only as a dry run on a loaded 2-core CPU machine.
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
for p in ("torch", "torchvision", "transformers", "peft", "accelerate", "tokenizers", "huggingface-hub", "datasets", "hydra-core", "wandb", "pillow", "pytest", "pytest-timeout"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "MISSING")
EOF
cat "$out/versions.txt"

# Six pytest processes side by side, 2 threads each: the golden smoke test
# of every family (tests/models/test_families.py, its stacked and separate halves), the family files
# (processor facts, offline processors, label masks) and inspect's numbers against the real processors.
run_group() {  # run_group N ARGS...: one pytest process, its log and JUnit file in $tmp
  local i=$1
  shift
  OMP_NUM_THREADS=2 python3 -m pytest "$@" -m "not slow" -rfEs --durations=5 -p no:cacheprovider \
    --basetemp="$tmp/pytest-$i" --junitxml="$tmp/pytest-$i.xml" >"$tmp/pytest-$i.log" 2>&1
}
run_group 0 tests/models/test_families.py -k "not separate" &
run_group 1 tests/models/test_families.py -k separate &
run_group 2 tests/models/test_phi4_multimodal.py tests/test_preview.py::test_numbers_agree_with_the_real_processor_on_the_tiny_models \
  tests/test_preview.py::test_qwen2_vl_numbers_follow_the_published_resize_formula \
  tests/test_preview.py::test_llava_1_5_offline_is_336_pixels_and_576_tokens_and_refuses_another_size &
run_group 3 tests/models/test_phi3_v.py tests/models/test_paligemma.py &
run_group 4 tests/models/test_gemma3.py tests/models/test_idefics3.py tests/models/test_internvl.py &
run_group 5 tests/models/test_llava_onevision.py tests/models/test_qwen2_5_vl_and_qwen3_vl.py tests/models/test_qwen2_vl.py &
tests_rc=0
for job in $(jobs -p); do
  wait "$job" || tests_rc=1
done
: >"$out/pytest.log"
for i in 0 1 2 3 4 5; do
  { echo "==== pytest group $i"; cat "$tmp/pytest-$i.log"; echo; } >>"$out/pytest.log"
done
# one JUnit file of the six
python3 - "$out/pytest.xml" "$tmp"/pytest-*.xml <<'EOF2'
import sys, xml.etree.ElementTree as ET
root = ET.Element("testsuites")
for path in sys.argv[2:]:
    tree = ET.parse(path).getroot()
    root.extend(tree.iter("testsuite"))
ET.ElementTree(root).write(sys.argv[1], encoding="utf-8", xml_declaration=True)
EOF2
grep -hE "^(FAILED|ERROR|SKIPPED|=+ .*(passed|failed|error).* =+$)" "$out/pytest.log"
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
# a size a family cannot show is a row, not an exit status: a missing package behind it is a failure here
if grep -q "not installed" "$out/inspect.log"; then
  echo "inspect: a processor could not be built (a package not installed):"
  grep "not installed" "$out/inspect.log"
  inspect_rc=1
fi
grep '^==== ' "$out/inspect.log"
echo "inspect: exit $inspect_rc; total $((SECONDS - start)) s"
[ "$tests_rc" -eq 0 ] && [ "$inspect_rc" -eq 0 ]
