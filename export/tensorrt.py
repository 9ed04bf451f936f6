"""Building TensorRT engines (``maskrt export engine``): the builder half of the TensorRT API (the
runtime half is :mod:`maskrt.runtime.backends.tensorrt_engine`; the sidecar's format is
:mod:`maskrt.export.artifacts`). ``tensorrt`` is imported inside :func:`build_engine`, so nothing
of TensorRT loads until an engine is built. Written against the TensorRT 10 Python API
(``IBuilder``/``INetworkDefinition``/``OnnxParser``) and TensorRT 11's removals.

Precision is the ONNX's, on TensorRT 10 as on 11: networks are created strongly typed (TensorRT 10:
flag ``STRONGLY_TYPED``; TensorRT 11 has no other kind), so an fp16 engine comes from the fp16
export (``maskrt export onnx --fp16``: backbone and heads in float16, RoIs, box decoding, scores
and NMS in float32). TensorRT 10's weak typing (``BuilderFlag.FP16`` on the fp32 ONNX) is not used:
it lets TensorRT run box decoding and NMS in fp16, whose 1-pixel resolution above 1024 moves boxes
and changes NMS. ``--fp16`` on an fp32 ONNX is refused with that explanation.

TF32 is off unless asked for (``tf32=True``, ``maskrt export engine --tf32``): TensorRT enables it
by default for float32 layers, and its 10-bit mantissa products move float32 engines' boxes and
scores away from the other backends' float32 answers (the parity tests match those exactly). The
float32 parts of an fp16 engine (RoIs, box decoding, NMS) are float32 layers too, so the setting
applies to both precisions; the sidecar records it (``tf32``).

One optimization profile covers batches 1 to ``max_batch``. A timing cache file, when given, is
read before and written after the build, so rebuilding (another batch size, another precision) on
the same GPU is faster. The engine's JSON sidecar (``<engine>.json``, :mod:`maskrt.export.artifacts`)
holds the ONNX's ``maskrt.*`` metadata plus the TensorRT version, GPU name, compute capability and
precision.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt import plugins
from maskrt.errors import MaskrtError
from maskrt.export.artifacts import (
    INPUT_NAME,
    atomic_write,
    gpu_description,
    read_metadata,
    sidecar_path,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("maskrt.export.tensorrt")

DEFAULT_WORKSPACE_GIB = 4.0


def _onnx_facts(onnx_path: Path) -> tuple[dict[str, str], bool, int, str]:
    """(maskrt metadata, holds fp16 tensors, canvas, sha256) of a tensorrt-target ONNX."""
    import onnx

    from maskrt.model.checkpoint import file_sha256

    if not onnx_path.is_file():
        raise MaskrtError(f"{onnx_path}: no such ONNX file")
    try:
        proto = onnx.load_model(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise MaskrtError(
            f"{onnx_path}: not an ONNX file ({str(exc).splitlines()[0][:200]})"
        ) from None
    meta = read_metadata(proto)
    if meta.get("target") != "tensorrt":
        raise MaskrtError(
            f"{onnx_path}: exported for target {meta.get('target', 'unknown')!r}; "
            f"TensorRT needs `maskrt export onnx --target tensorrt`"
        )
    half = onnx.TensorProto.FLOAT16
    fp16 = any(t.data_type == half for t in proto.graph.initializer) or any(
        v.type.tensor_type.elem_type == half for v in [*proto.graph.value_info, *proto.graph.output]
    )
    return meta, fp16, int(meta["canvas"]), file_sha256(onnx_path)


def check_build_request(
    onnx_path: str | os.PathLike, max_batch: int | None, workspace_gib: float, fp16: bool = False
) -> tuple[dict[str, str], bool, int, str, int]:
    """What can be checked before TensorRT is imported: (metadata, fp16 ONNX, canvas, sha256,
    max batch)."""
    meta, fp16_onnx, canvas, sha = _onnx_facts(Path(onnx_path))
    if fp16 and not fp16_onnx:
        raise MaskrtError(
            f"--fp16: {onnx_path} is fp32, and engines keep their ONNX's precision (strongly "
            f"typed, so that boxes and NMS stay float32): build from "
            f"`maskrt export onnx --target tensorrt --fp16`, or without --fp16"
        )
    onnx_max = int(meta.get("max_batch", 1))
    max_batch = onnx_max if max_batch is None else max_batch
    if not 1 <= max_batch <= onnx_max:
        raise MaskrtError(
            f"--max-batch {max_batch}: {onnx_path} takes batches of 1 to {onnx_max} "
            f"(export it with a larger --max-batch)"
        )
    if not workspace_gib > 0:
        raise MaskrtError(f"--workspace must be positive (GiB), got {workspace_gib}")
    return meta, fp16_onnx, canvas, sha, max_batch


def configure_builder(trt, config, *, workspace_gib: float, tf32: bool) -> None:
    """The builder settings of every maskrt engine on TensorRT's ``IBuilderConfig``: the
    workspace, and TF32 cleared unless ``tf32`` (TensorRT sets it by default)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    max_batch: int | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | os.PathLike | None = None,
    device: str | torch.device = "cuda",
    tf32: bool = False,
) -> dict:
    """Build a serialized engine from a tensorrt-target ONNX; writes ``out`` and its sidecar and
    returns the sidecar's content. ``max_batch`` defaults to the ONNX's; ``fp16`` asks for an fp16
    engine, which needs the fp16 export (the engine has the ONNX's precision either way); ``tf32``
    lets TensorRT run float32 layers in TF32 (module docstring)."""
    import torch  # here, not at the top: `maskrt --help` reads this module's defaults

    meta, fp16_onnx, canvas, sha, max_batch = check_build_request(
        onnx_path, max_batch, workspace_gib, fp16
    )
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise MaskrtError("building a TensorRT engine needs a CUDA GPU (torch sees none)")
    trt = plugins.import_tensorrt()
    plugins.load()
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        flags = 0  # TensorRT 11: every network is strongly typed, the flag is gone
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise MaskrtError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors[:2000]}")
        config = builder.create_builder_config()
        configure_builder(trt, config, workspace_gib=workspace_gib, tf32=tf32)
        profile = builder.create_optimization_profile()
        shape = lambda b: (b, 3, canvas, canvas)  # noqa: E731
        profile.set_shape(INPUT_NAME, shape(1), shape(max_batch), shape(max_batch))
        config.add_optimization_profile(profile)
        cache_file = Path(timing_cache) if timing_cache else None
        if cache_file is not None:
            cache = config.create_timing_cache(
                cache_file.read_bytes() if cache_file.is_file() else b""
            )
            config.set_timing_cache(cache, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise MaskrtError(
                f"{onnx_path}: TensorRT could not build an engine (see its log above)"
            )
        if cache_file is not None:
            atomic_write(cache_file, bytes(config.get_timing_cache().serialize()))
        sidecar = {
            **meta,
            "max_batch": str(max_batch),
            "onnx_sha256": sha,
            "tensorrt_version": trt.__version__,
            **gpu_description(device),
            "precision": "fp16" if fp16_onnx else "fp32",
            "strongly_typed": True,
            "tf32": tf32,
            "build_seconds": round(time.perf_counter() - started, 1),
        }
    # sidecar first: a plan on disk always has its sidecar (caches test for the plan)
    atomic_write(sidecar_path(out), json.dumps(sidecar, indent=2).encode())
    atomic_write(Path(out), bytes(plan))
    log.info(
        "built %s: %.1f MB, %s, batch 1..%d, TensorRT %s on %s (sm %s), %.0f s",
        out,
        Path(out).stat().st_size / 1e6,
        sidecar["precision"],
        max_batch,
        trt.__version__,
        sidecar["gpu_name"],
        sidecar["compute_capability"],
        sidecar["build_seconds"],
    )
    return sidecar
