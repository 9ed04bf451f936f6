#!/usr/bin/env bash
# What only a CUDA GPU can show, in one run of under ten minutes (a lent GPU's time is short):
#   1. the GPU tests (`pytest -m gpu`: CUDA RoIAlign kernel against torchvision, deploy graph and
#      torch backend on CUDA against the CPU, nvJPEG decoding, mask pasting on CUDA);
#   2. `bench/roi_align_gpu.py`: our multi-level RoIAlign kernel against torchvision's pooler;
#   3. `bench/deploy_gpu.py`: the deploy graph against torchvision's eager MaskRCNN, fp32 and fp16;
#   4. `maskrt bench peers --device cuda`: maskrt serve against the naive torchvision server.
# Each step has its own time limit and log (OUTDIR/STEP.log); a failed step does not stop the next.
#
#   bash bench/gpu_session.sh OUTDIR
#
# It runs from the repo root under the machine's python3, which must have torch and torchvision.
# Packages missing there may come as wheels in .wheels-gpu/ (maskrt's own wheel among them;
# `bash bench/gpu_wheels.sh` makes them): they are installed into a private folder first and put on
# PYTHONPATH.
set -u
out=${1:?usage: bash bench/gpu_session.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# `python -m` puts the working directory first on sys.path, where ./maskrt (the repo's stub of
# the package-dir mapping) would shadow the installed package
export PYTHONSAFEPATH=1
if compgen -G ".wheels-gpu/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/maskrt-site .wheels-gpu/*.whl || exit 1
  export PYTHONPATH=/tmp/maskrt-site
fi

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (at most ${limit} s): $*"
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "   exit $rc after $(($(date +%s) - start)) s; last lines:"
  tail -n 4 "$out/$name.log" | cut -c1-400 | sed 's/^/   | /'
}

step env 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python3 -c "import sys, torch, torchvision, onnxruntime, maskrt
print(sys.version.split()[0], torch.__version__, torchvision.__version__, onnxruntime.__version__,
      onnxruntime.get_available_providers(), torch.cuda.get_device_name(), maskrt.__file__)"'
step tests 200 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 150 \
  tests/test_plugin_gpu.py tests/test_roi_align.py tests/test_deploy.py tests/test_backends.py \
  tests/test_postprocess.py tests/test_server_decode.py tests/test_cache.py \
  tests/test_tensorrt_engine.py
step roi_align 60 bash -c "python3 -m maskrt.bench.roi_align_gpu --boxes 1000 --batch 1 &&
  python3 -m maskrt.bench.roi_align_gpu --boxes 1000 --batch 8 --iters 20"
step deploy 100 python3 -m maskrt.bench.deploy_gpu --canvas 800 --batches 1,8 --iters 15
step peers 170 python3 -m maskrt bench peers --model r50 --canvas 800 --device cuda \
  --backend torch --servers maskrt,naive --concurrency 1,8 --duration 8 --warmup 3 \
  --max-batch 8 --json "$out/peers.json"
echo "== done; logs in $out"
