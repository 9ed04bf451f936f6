#!/usr/bin/env bash
# Entrypoint of the maskrt images (Dockerfile targets `gpu` and `cpu`), installed as
# /usr/local/bin/maskrt-entrypoint.
#
#   maskrt-entrypoint [SERVE FLAGS...]   check the container, then
#                                         exec `maskrt serve --backend B [--model M] [SERVE FLAGS...]`
#                                         (with MASKRT_MODEL_REPOSITORY set, the server serves every
#                                         model in that directory instead: docs/scaling.md)
#   maskrt-entrypoint COMMAND [ARGS...]  run COMMAND instead (e.g. `bash`, `maskrt export ...`)
#
# Configuration is the server's own environment (MASKRT_*, docs/architecture.md "Settings"; MASKRT_MODEL,
# MASKRT_BACKEND, MASKRT_ENGINE_PRECISION, MASKRT_CACHE_DIR ...). The server makes what the backend
# needs once and keeps it in MASKRT_CACHE_DIR (a volume in docker-compose.yml; see
# maskrt.export.cache): the ONNX export of a checkpoint, and for MASKRT_BACKEND=tensorrt the engine
# for the GPU it finds (keyed by ONNX, GPU, TensorRT version, precision and max batch; minutes the
# first time, reused after). It does so after it starts listening: /livez answers at once,
# /readyz (the healthcheck) once the model is ready.
#
# This script fails early, with what to do, where the server could not start: an unknown backend,
# a bad MASKRT_MAX_BATCH or MASKRT_ENGINE_PRECISION, a cache that cannot be created, no GPU or no TensorRT for
# the tensorrt backend, a missing model file, a model repository that is not mounted or is set
# beside MASKRT_MODEL. MASKRT_BACKEND=auto goes to the server as is: on a GPU
# it tries TensorRT and, when TensorRT cannot serve, stays up on the torch backend and says so
# (GET /v1/model's fallback_reason, maskrt_backend_fallback); a resolution here would lose that.
set -euo pipefail

log() { printf '[maskrt-entrypoint] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Not a flag: a command to run instead of the server.
if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi

backend="${MASKRT_BACKEND:-auto}"
cache_dir="${MASKRT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/maskrt}"
precision="${MASKRT_ENGINE_PRECISION:-fp16}"
max_batch="${MASKRT_MAX_BATCH:-8}"
model="${MASKRT_MODEL:-}"
repository="${MASKRT_MODEL_REPOSITORY:-}"

[[ "$max_batch" =~ ^[1-9][0-9]*$ ]] || die "MASKRT_MAX_BATCH must be a positive integer, got '$max_batch'"
[[ "$precision" == fp16 || "$precision" == fp32 ]] ||
    die "MASKRT_ENGINE_PRECISION must be fp16 or fp32, got '$precision'"
case "$backend" in
auto) log "MASKRT_BACKEND=auto: on a GPU the server tries TensorRT and serves on the torch backend when TensorRT cannot (GET /v1/model says which), else on ONNX Runtime" ;;
tensorrt | onnxruntime | torch) ;;
*) die "MASKRT_BACKEND must be auto, tensorrt, onnxruntime or torch, got '$backend'" ;;
esac
case "$backend:$model" in
onnxruntime:*.plan | onnxruntime:*.engine | torch:*.plan | torch:*.engine)
    die "MASKRT_MODEL=$model is a TensorRT engine; the $backend backend needs a checkpoint$([[ $backend == onnxruntime ]] && echo ' or an ONNX')"
    ;;
esac
if [[ -n "$model" && ! "$model" =~ ^MaskRCNN_ && ! -r "$model" ]]; then
    die "model file '$model' does not exist or is not readable (MASKRT_MODEL; mount it into the container)"
fi

# A model repository: the server reads MASKRT_MODEL_REPOSITORY itself and judges each model in it
# (a bad one fails alone); here only what would fail them all.
if [[ -n "$repository" ]]; then
    [[ -z "$model" ]] ||
        die "MASKRT_MODEL ($model) and MASKRT_MODEL_REPOSITORY ($repository) are both set: serve one model file or a model repository, not both"
    [[ -d "$repository" && -r "$repository" && -x "$repository" ]] ||
        die "model repository '$repository' is not a directory uid $(id -u) can read (MASKRT_MODEL_REPOSITORY; mount it into the container, e.g. with docker-compose.repository.yml)"
    names=()
    for folder in "$repository"/*/; do
        [[ -d "$folder" ]] && names+=("$(basename "$folder")")
    done
    if [[ ${#names[@]} -eq 0 ]]; then
        log "model repository $repository holds no model folder yet: /readyz answers 503 until a model serves (add <name>/<version>/<model file>: MASKRT_REPOSITORY_POLL_S picks it up, or POST /v2/repository/models/<name>/load)"
    else
        log "serving the model repository $repository: ${names[*]}"
    fi
fi

mkdir -p "$cache_dir" 2>/dev/null || true
[[ -d "$cache_dir" ]] ||
    die "cache directory $cache_dir is not writable by uid $(id -u): mount a volume there (docker-compose.yml does) or, for a bind mount, make it writable by uid $(id -u)"
[[ -w "$cache_dir" ]] ||
    log "cache directory $cache_dir is read-only: the server uses what it holds (filled once by a server that could write it) and stops if it must make anything"
# The image's build id names the cached ONNX exports, so a new image never reuses an old export.
MASKRT_BUILD_ID="$(cat "${MASKRT_BUILD_ID_FILE:-/opt/maskrt/build-id}" 2>/dev/null || true)"
export MASKRT_BUILD_ID MASKRT_CACHE_DIR="$cache_dir"

# The GPU for the tensorrt backend, and for auto on a CUDA device (the GPU image's default), which
# tries TensorRT there: no GPU is an error; no TensorRT is one for tensorrt and an engine only (auto
# serves a checkpoint on torch, an ONNX file on ONNX Runtime).
device="${MASKRT_DEVICE:-}"
if [[ "$backend" == tensorrt || ("$backend" == auto && "$device" == cuda*) ]]; then
    device="${device:-cuda:0}"
    [[ "$device" =~ ^cuda(:([0-9]+))?$ ]] ||
        die "the tensorrt backend runs on a CUDA device; MASKRT_DEVICE is '$device' (use cuda or cuda:N)"
    index="${BASH_REMATCH[2]:-0}"
    rc=0
    info="$(maskrt-env gpu "$index")" || rc=$?
    if [[ $rc -eq 3 ]]; then
        die "no NVIDIA GPU is visible in this container (CUDA device $index). Start it with GPU access: \`docker compose up\` reserves one (deploy.resources.reservations.devices), \`docker run\` needs --gpus all; the host needs the NVIDIA driver (R580 or newer) and the NVIDIA Container Toolkit. Without a GPU use the cpu image (docker-compose.cpu.yml) or MASKRT_BACKEND=onnxruntime."
    elif [[ $rc -eq 4 && ("$backend" == tensorrt || "$model" == *.plan || "$model" == *.engine) ]]; then
        die "the tensorrt Python package cannot be imported; this is the GPU image's TensorRT install, rebuild the image (target gpu)"
    elif [[ $rc -eq 4 ]]; then
        log "the tensorrt Python package cannot be imported: the server serves on the torch backend (ONNX Runtime for an ONNX file) instead and says why (GET /v1/model); rebuild the image (target gpu) for TensorRT"
    elif [[ $rc -ne 0 ]]; then
        die "probing the GPU failed (maskrt-env gpu $index exited $rc)"
    else
        IFS=$'\t' read -r gpu_name compute_cap trt_version <<<"$info"
        log "GPU $index: $gpu_name (sm_$compute_cap), TensorRT $trt_version"
        case "$model" in
        *.plan | *.engine) log "serving the given engine $model as is (it must have been built for $gpu_name and TensorRT $trt_version)" ;;
        *) log "the server builds (first start on this GPU: minutes) or reuses the $precision engine in $cache_dir/engines before it turns ready" ;;
        esac
    fi
fi

args=(serve --backend "$backend")
if [[ -n "$model" ]]; then args+=(--model "$model"); fi
log "exec maskrt ${args[*]} $*"
exec maskrt "${args[@]}" "$@"
