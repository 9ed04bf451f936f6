#!/usr/bin/env bash
# Entrypoint of the maskrt images (Dockerfile targets `gpu` and `cpu`), installed as
# /usr/local/bin/maskrt-entrypoint.
#
#   maskrt-entrypoint [SERVE FLAGS...]   prepare the model for MASKRT_BACKEND, then
#                                         exec `maskrt serve --backend B --model M [SERVE FLAGS...]`
#   maskrt-entrypoint COMMAND [ARGS...]  run COMMAND instead (e.g. `bash`, `maskrt export ...`)
#
# Configuration is the server's own environment (MASKRT_*, DESIGN.md "Settings") plus:
#   MASKRT_CACHE_DIR          cache root (image: /var/cache/maskrt, a volume in docker-compose.yml)
#   MASKRT_ENGINE_CACHE       TensorRT engines and timing caches (default $MASKRT_CACHE_DIR/engines)
#   MASKRT_ENGINE_PRECISION   fp16 (default) or fp32, for engines built here
#
# MASKRT_BACKEND=tensorrt (the GPU image's default), with MASKRT_MODEL
#   unset           -> the bundled checkpoint is exported to a tensorrt-target ONNX, then built
#   a checkpoint    -> exported to a tensorrt-target ONNX, then built
#   an .onnx        -> built (must be a tensorrt-target export)
#   a .plan/.engine -> served as given (it must have been built for this GPU and TensorRT)
# Engines are cached under a name made of the ONNX's sha256, the GPU's name and compute
# capability, the TensorRT version, the precision and the max batch: a restart, or another
# container on the same volume and the same kind of GPU, reuses the engine; a different GPU or
# TensorRT builds its own. A build that did not finish leaves no "<plan>.ok" marker and is redone.
#
# MASKRT_BACKEND=onnxruntime (the CPU image's default): a checkpoint (or nothing) is exported to an
# onnxruntime-target ONNX once and cached; an .onnx is served as given.
# MASKRT_BACKEND=torch: the checkpoint is served as given.
# MASKRT_BACKEND=auto: tensorrt on a GPU with TensorRT, else onnxruntime.
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
engine_cache="${MASKRT_ENGINE_CACHE:-$cache_dir/engines}"
onnx_cache="$cache_dir/onnx"
precision="${MASKRT_ENGINE_PRECISION:-fp16}"
max_batch="${MASKRT_MAX_BATCH:-8}"
model="${MASKRT_MODEL:-}"

[[ "$max_batch" =~ ^[1-9][0-9]*$ ]] || die "MASKRT_MAX_BATCH must be a positive integer, got '$max_batch'"
[[ "$precision" == fp16 || "$precision" == fp32 ]] ||
    die "MASKRT_ENGINE_PRECISION must be fp16 or fp32, got '$precision'"
if [[ "$backend" == auto ]]; then
    backend="$(maskrt-env backend)" || die "could not resolve MASKRT_BACKEND=auto"
    log "MASKRT_BACKEND=auto resolved to $backend"
fi
case "$backend" in
tensorrt | onnxruntime | torch) ;;
*) die "MASKRT_BACKEND must be auto, tensorrt, onnxruntime or torch, got '$backend'" ;;
esac

ensure_dir() {
    mkdir -p "$1" 2>/dev/null || true
    [[ -d "$1" && -w "$1" ]] ||
        die "cache directory $1 is not writable by uid $(id -u): mount a volume there (docker-compose.yml does) or, for a bind mount, make it writable by uid $(id -u)"
}

# lock FILE: exclusive lock on FILE (fd 9) so that containers sharing the cache volume do not
# build the same file at once; unlock before exec so the server does not hold it.
lock() {
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$1"
        if ! flock -n 9; then
            log "another container is building into $(dirname "$1"); waiting for it"
            flock 9
        fi
    else
        log "warning: flock not found; concurrent starts on one cache volume may build twice"
    fi
}
unlock() { exec 9>&-; }

sha256() { sha256sum "$1" | cut -c1-16; }

# The checkpoint to export: MASKRT_MODEL or the bundled one.
checkpoint_path() {
    local path="$model"
    if [[ -z "$path" ]]; then
        path="$(maskrt-env default-model)" || die "could not locate the bundled checkpoint"
        [[ -f "$path" && -r "$path" ]] ||
            die "the bundled checkpoint $path is missing from this image; rebuild it, or set MASKRT_MODEL to a mounted checkpoint, ONNX or engine"
    fi
    [[ -f "$path" && -r "$path" ]] || die "model file '$path' does not exist or is not readable (MASKRT_MODEL; mount it into the container)"
    printf '%s\n' "$path"
}

# export_onnx CHECKPOINT TARGET [fp16] -> prints the cached ONNX path, exporting it first if needed
# (for batches up to MASKRT_MAX_BATCH: the engine and the server take no larger batch than the ONNX;
# fp16: float16 backbone and heads, for TensorRT 11's strongly typed engines).
# The ONNX name carries the image's build id (sha of the maskrt wheel, written by the Dockerfile) so
# that an image with other export code does not reuse an old export from the volume.
export_onnx() {
    local ckpt="$1" target="$2" half="${3:-}" build_id onnx
    build_id="$(cat "${MASKRT_BUILD_ID_FILE:-/opt/maskrt/build-id}" 2>/dev/null || true)"
    onnx="$onnx_cache/$(sha256 "$ckpt")-${target}${half:+-$half}-b${max_batch}${build_id:+-$build_id}.onnx"
    ensure_dir "$onnx_cache"
    lock "$onnx.lock"
    if [[ -f "$onnx" && -f "$onnx.ok" ]]; then
        log "reusing $onnx"
    else
        rm -f "$onnx.ok"
        log "exporting $ckpt to ONNX (target $target): $onnx"
        maskrt export onnx --model "$ckpt" --out "$onnx" --target "$target" --max-batch "$max_batch" \
            ${half:+--fp16} >&2 ||
            die "ONNX export of $ckpt failed (see above)"
        touch "$onnx.ok"
    fi
    unlock
    printf '%s\n' "$onnx"
}

serve() {
    log "exec maskrt serve --backend $backend $*"
    exec maskrt serve --backend "$backend" "$@"
}

case "$backend" in
torch)
    if [[ -n "$model" ]]; then serve --model "$model" "$@"; fi
    serve "$@"
    ;;

onnxruntime)
    case "$model" in
    *.plan | *.engine) die "MASKRT_MODEL=$model is a TensorRT engine; the onnxruntime backend needs a checkpoint or an ONNX" ;;
    *.onnx)
        [[ -r "$model" ]] || die "ONNX file '$model' does not exist or is not readable (MASKRT_MODEL)"
        onnx="$model"
        ;;
    *)
        ckpt="$(checkpoint_path)"
        onnx="$(export_onnx "$ckpt" onnxruntime)"
        ;;
    esac
    serve --model "$onnx" "$@"
    ;;

tensorrt)
    device="${MASKRT_DEVICE:-cuda:0}"
    [[ "$device" =~ ^cuda(:([0-9]+))?$ ]] ||
        die "the tensorrt backend runs on a CUDA device; MASKRT_DEVICE is '$device' (use cuda or cuda:N)"
    index="${BASH_REMATCH[2]:-0}"

    rc=0
    info="$(maskrt-env gpu "$index")" || rc=$?
    if [[ $rc -eq 3 ]]; then
        die "no NVIDIA GPU is visible in this container (CUDA device $index). Start it with GPU access: \`docker compose up\` reserves one (deploy.resources.reservations.devices), \`docker run\` needs --gpus all; the host needs the NVIDIA driver (R580 or newer) and the NVIDIA Container Toolkit. Without a GPU use the cpu image (docker-compose.cpu.yml) or MASKRT_BACKEND=onnxruntime."
    elif [[ $rc -eq 4 ]]; then
        die "the tensorrt Python package cannot be imported; this is the GPU image's TensorRT install, rebuild the image (target gpu)"
    elif [[ $rc -ne 0 ]]; then
        die "probing the GPU failed (maskrt-env gpu $index exited $rc)"
    fi
    IFS=$'\t' read -r gpu_name compute_cap trt_version <<<"$info"
    log "GPU $index: $gpu_name (sm_$compute_cap), TensorRT $trt_version"

    case "$model" in
    *.plan | *.engine)
        [[ -r "$model" ]] || die "engine file '$model' does not exist or is not readable (MASKRT_MODEL)"
        log "serving the given engine $model as is (it must have been built for $gpu_name and TensorRT $trt_version)"
        serve --model "$model" "$@"
        ;;
    *.onnx)
        [[ -r "$model" ]] || die "ONNX file '$model' does not exist or is not readable (MASKRT_MODEL)"
        onnx="$model"
        ;;
    *)
        ckpt="$(checkpoint_path)"
        # TensorRT 11 has no fp16 builder flag: its engines keep the ONNX's precision
        half=""
        if [[ "$precision" == fp16 && "${trt_version%%.*}" -ge 11 ]]; then half=fp16; fi
        onnx="$(export_onnx "$ckpt" tensorrt "$half")"
        ;;
    esac

    gpu_slug="$(printf '%s' "$gpu_name" | tr -cs 'A-Za-z0-9' '_' | sed 's/^_*//; s/_*$//')"
    hw="${gpu_slug}-sm${compute_cap}-trt${trt_version}"
    plan="$engine_cache/$(sha256 "$onnx")-${hw}-${precision}-b${max_batch}.plan"
    ensure_dir "$engine_cache"
    lock "$plan.lock"
    if [[ -f "$plan" && -f "$plan.ok" ]]; then
        log "reusing cached engine $plan"
    else
        rm -f "$plan.ok"
        flags=(--max-batch "$max_batch" --timing-cache "$engine_cache/timing-${hw}.cache")
        if [[ "$precision" == fp16 ]]; then flags+=(--fp16); fi
        log "building the TensorRT engine for $gpu_name ($precision, max batch $max_batch); this takes minutes the first time: $plan"
        maskrt export engine --onnx "$onnx" --out "$plan" "${flags[@]}" >&2 ||
            die "building the TensorRT engine from $onnx failed (see above)"
        touch "$plan.ok"
    fi
    unlock
    # The engine is built for this batch size: serve with the same one.
    export MASKRT_MAX_BATCH="$max_batch"
    serve --model "$plan" "$@"
    ;;
esac
