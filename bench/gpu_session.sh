#!/usr/bin/env bash
# What only a CUDA GPU can show, planned for a lent GPU's 15 minutes: the steps below run in
# priority order, each under its own time limit (the caps add up to under 8 minutes, so a rerun of
# the failed steps still fits), a failed step does not stop the next, and everything lands in two
# files in OUTDIR: summary.md (device, date, commit, command; per step its exit code, seconds and
# last lines) and gpu_session.tar.gz (every step's log and JSON).
#   P1  environment and toolchain; the RoIAlign extension built once (TORCH_EXTENSIONS_DIR, this
#       GPU's architecture only) for every later step; `pytest -m gpu`; the TensorRT plugin library
#       built with CMake for this GPU against the stand-in libnvinfer and driven through its own
#       enqueue (two streams, graph capture, fp32 and fp16, against the CPU reference; under
#       compute-sanitizer memcheck and racecheck at tiny sizes).
#   P2  the deploy graph with our kernels against the composite ops (tests/test_cuda_fast_path.py);
#       Pipeline on CUDA against the CPU, maskrt serve on CUDA over HTTP, 32 concurrent posts
#       (tests/test_gpu_serving.py).
#   P3  benchmarks on random_model's realistic R50-FPN at canvas 800: the deploy graph against
#       torchvision at batch 1/8/16, fp32 and fp16, CUDA graphs off and on, the worst case
#       (threshold 0) as a second row; post-processing on CUDA; `maskrt bench peers` at
#       concurrency 1, 8, 32 on the torch backend's fast path (MASKRT_CUDA_GRAPHS,
#       MASKRT_CUDA_ROI_ALIGN, MASKRT_TORCH_PRECISION=fp16, MASKRT_CHANNELS_LAST,
#       MASKRT_PINNED_COPIES, MASKRT_GPU_DECODE) against the naive torchvision server.
#
#   bash bench/gpu_session.sh --dry-run                  # the steps, their caps and commands
#   bash bench/gpu_session.sh --prepare INCLUDE_DIR      # here: TensorRT headers into .gpu-session/
#   bash bench/gpu_wheels.sh                             # here: the packages the GPU machine lacks
#   bash bench/gpu_session.sh OUTDIR [--only STEP,STEP]  # there, from the repo root
#
# On this workplace's lent GPU (the device tool's `run`), with the headers and wheels prepared:
#   command: bash bench/gpu_session.sh "$OUT"
#   carry:   [".gpu-session", ".wheels-gpu"]      timeout_s: 540
# and to rerun only what failed: bash bench/gpu_session.sh "$OUT" --only serving,peers
#
# It runs under the machine's python3, which must have torch and torchvision; the repository
# comes first on PYTHONPATH, the wheels of .wheels-gpu/ (if any) are installed into a private
# folder after it.
set -u
PLAN_LIMIT_S=480 # the whole run, kill grace included
GRACE_S=1        # `timeout -k`: a step that ignores SIGTERM is killed this much after its cap
SESSION=.gpu-session

# the GPU-marked test files that have no step of their own
gpu_files=$(grep -l 'mark\.gpu' tests/test_*.py 2>/dev/null |
  grep -v -e test_plugin_enqueue_gpu -e test_cuda_fast_path -e test_gpu_serving | tr '\n' ' ')
PYTEST="python3 -m pytest -q -p no:cacheprovider -m gpu"
FAST="MASKRT_CUDA_GRAPHS=1 MASKRT_CUDA_ROI_ALIGN=1"
DEPLOY="python3 -m maskrt.bench.deploy_gpu --canvas 800"

NAMES=() PRIORITIES=() CAPS=() COMMANDS=()
add() { NAMES+=("$1") PRIORITIES+=("$2") CAPS+=("$3") COMMANDS+=("$4"); }
# shellcheck disable=SC2016  # expanded by the step's own shell
add env P1 15 'nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv &&
  nvcc --version | tail -n 1 && cmake --version | head -n 1 &&
  compute-sanitizer --version | tail -n 1 && ls "$TENSORRT_INCLUDE_DIR/NvInferVersion.h" &&
  python3 -c "import sys, torch, torchvision, onnxruntime, fastapi, maskrt; print(sys.version,
  torch.__version__, torchvision.__version__, onnxruntime.__version__,
  torch.cuda.get_device_name(), maskrt.__file__)"'
add extension P1 45 'python3 -c "from maskrt.plugins.torch_ext import load_extension;
  load_extension(verbose=True)"'
add gpu_tests P1 80 "$PYTEST --timeout 75 $gpu_files"
add plugin_enqueue P1 45 "$PYTEST --timeout 40 tests/test_plugin_enqueue_gpu.py"
add fast_path P2 50 "$PYTEST --timeout 45 tests/test_cuda_fast_path.py"
add serving P2 55 "$PYTEST --timeout 50 tests/test_gpu_serving.py"
add deploy P3 50 "$DEPLOY --batches 1,8,16 --iters 5 --warmup 2 &&
  $DEPLOY --batches 8 --iters 3 --warmup 1 --workload worst"
add deploy_graphs P3 35 "$FAST $DEPLOY --batches 1,8,16 --iters 5 --warmup 2"
add postprocess P3 15 "python3 -m maskrt.bench.postprocess --device cuda --runs 3"
add peers P3 70 "$FAST MASKRT_TORCH_PRECISION=fp16 MASKRT_CHANNELS_LAST=1 MASKRT_PINNED_COPIES=1 \
MASKRT_GPU_DECODE=1 python3 -m maskrt bench peers --model r50 --canvas 800 --device cuda \
--backend torch --servers maskrt,naive --concurrency 1,8,32 --duration 3 --warmup 1 \
--max-batch 16 --json \"\$LOGS/peers.json\""

usage="usage: bash bench/gpu_session.sh OUTDIR [--only STEP,...] | --dry-run | --prepare INCLUDE_DIR"
case "${1:-}" in
--dry-run)
  total=0
  for i in "${!NAMES[@]}"; do
    printf '%s %-15s %3d s  %s\n' "${PRIORITIES[$i]}" "${NAMES[$i]}" "${CAPS[$i]}" \
      "$(tr -s ' \n' ' ' <<<"${COMMANDS[$i]}")"
    total=$((total + CAPS[i] + GRACE_S))
  done
  echo "total ${total} s of ${PLAN_LIMIT_S} s (caps plus ${GRACE_S} s kill grace per step)"
  exit 0
  ;;
--prepare)
  include=${2:?$usage}
  [ -f "$include/NvInferVersion.h" ] || {
    echo "$include: no NvInferVersion.h (a TensorRT include directory)" >&2
    exit 2
  }
  rm -rf "$SESSION/tensorrt"
  mkdir -p "$SESSION/tensorrt"
  cp -r "$include" "$SESSION/tensorrt/include"
  echo "copied $include to $SESSION/tensorrt/include ($(du -sh "$SESSION" | cut -f1))"
  exit 0
  ;;
"" | -*)
  echo "$usage" >&2
  exit 2
  ;;
esac
out=$1
only=""
[ "${2:-}" = --only ] && only=",${3:?$usage},"
mkdir -p "$out"
LOGS=$(mktemp -d /tmp/gpu-session.XXXXXX)
export LOGS PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/maskrt-extensions MAX_JOBS=16
export TENSORRT_INCLUDE_DIR=$PWD/$SESSION/tensorrt/include
# the extension and the plugin for this GPU only: one build, minutes shorter
TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)
export TORCH_CUDA_ARCH_LIST
site=""
if compgen -G ".wheels-gpu/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/maskrt-site .wheels-gpu/*.whl >"$LOGS/wheels.log" 2>&1 || exit 1
  site=:/tmp/maskrt-site
fi
export PYTHONPATH=$PWD$site

summary=$out/summary.md
{
  echo "# bench/gpu_session.sh"
  echo
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- command: bash bench/gpu_session.sh $*"
  echo
  echo "| step | priority | cap (s) | exit | seconds |"
  echo "| --- | --- | --- | --- | --- |"
} >"$summary"
tails=""
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]} cap=${CAPS[$i]}
  [ -n "$only" ] && [[ $only != *",$name,"* ]] && continue
  echo "== $name (${PRIORITIES[$i]}, at most $cap s)"
  start=$(date +%s)
  timeout -k "$GRACE_S" "$cap" bash -c "${COMMANDS[$i]}" >"$LOGS/$name.log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - start))
  echo "   exit $rc after $seconds s"
  echo "| $name | ${PRIORITIES[$i]} | $cap | $rc$([ "$rc" = 124 ] && echo ' (cap)') | $seconds |" \
    >>"$summary"
  tails+=$'\n'"### $name"$'\n\n```\n'"$(tail -n 6 "$LOGS/$name.log" | cut -c1-300)"$'\n```\n'
done
echo "$tails" >>"$summary"
cp "$summary" "$LOGS/summary.md"
tar -czf "$out/gpu_session.tar.gz" -C "$LOGS" .
rm -rf "$LOGS"
echo "== done: $summary and $out/gpu_session.tar.gz"
