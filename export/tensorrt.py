"""TensorRT engines: building (``maskrt export engine``) and running (the ``tensorrt`` backend).

This is the only module of maskrt that uses the TensorRT API, and it imports ``tensorrt`` inside
its functions, so nothing of TensorRT loads until an engine is built or opened. Written against the
TensorRT 10 Python API (``IBuilder``/``INetworkDefinition``/``OnnxParser``, named I/O tensors,
``execute_async_v3``) and TensorRT 11's removals:

- TensorRT 10 (weak typing): ``--fp16`` sets ``BuilderFlag.FP16`` on the fp32 tensorrt-target ONNX
  and TensorRT picks fp16 kernels layer by layer; the RoIAlign plugin offers fp32 and fp16 features
  (fp32 RoIs always).
- TensorRT 11 removes weak typing (``BuilderFlag.FP16`` is gone, every network is strongly typed):
  the engine's precision is the ONNX's own, so ``--fp16`` needs an ONNX whose tensors are already
  fp16 (``maskrt export onnx --fp16``); for an fp32 ONNX it is an error that says so. An ONNX that
  holds fp16 tensors is built strongly typed on TensorRT 10 as well (flag ``STRONGLY_TYPED``).

One optimization profile covers batches 1 to ``max_batch``. A timing cache file, when given, is
read before and written after the build, so rebuilding (another batch size, another precision) on
the same GPU is faster. The engine's JSON sidecar (``<engine>.json``) holds the ONNX's ``maskrt.*``
metadata plus the TensorRT version, GPU name, compute capability and precision (DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from maskrt.errors import MaskrtError
from maskrt.export.cache import atomic_write

log = logging.getLogger("maskrt.export.tensorrt")

INPUT = "images"
DEFAULT_WORKSPACE_GIB = 4.0


def import_tensorrt():
    """The ``tensorrt`` module, or a MaskrtError saying where TensorRT comes from."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MaskrtError(
            f"TensorRT is not installed here ({exc}); it ships in the GPU Docker image "
            f"(`docker compose up`), or install NVIDIA's tensorrt wheel (pip install "
            f"'maskrt[tensorrt]' with https://pypi.nvidia.com reachable)"
        ) from None
    return tensorrt


def weak_typing() -> bool:
    """Whether this TensorRT still has the fp16 builder flag (10.x; 11 removed it: fp16 engines
    then come from an fp16 ONNX)."""
    return hasattr(import_tensorrt().BuilderFlag, "FP16")


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | os.PathLike) -> dict:
    """An engine's JSON sidecar; a MaskrtError when it is missing or malformed."""
    path = sidecar_path(engine)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskrtError(
            f"{engine}: no sidecar {path.name} beside it; build engines with "
            f"`maskrt export engine`, which writes one"
        ) from None
    except (OSError, ValueError) as exc:
        raise MaskrtError(f"{path}: unreadable engine sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise MaskrtError(f"{path}: unreadable engine sidecar (not a JSON object)")
    return data


def gpu_description(device: torch.device) -> dict[str, str]:
    """Name and compute capability (``"9.0"``) of a CUDA device, as the sidecar records them."""
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "gpu_name": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
    }


def _onnx_facts(onnx_path: Path) -> tuple[dict[str, str], bool, int, str]:
    """(maskrt metadata, holds fp16 tensors, canvas, sha256) of a tensorrt-target ONNX."""
    import onnx

    from maskrt.export.onnx import read_metadata
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
    onnx_path: str | os.PathLike, max_batch: int | None, workspace_gib: float
) -> tuple[dict[str, str], bool, int, str, int]:
    """What can be checked before TensorRT is imported: (metadata, fp16 ONNX, canvas, sha256,
    max batch)."""
    meta, fp16_onnx, canvas, sha = _onnx_facts(Path(onnx_path))
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


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    max_batch: int | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | os.PathLike | None = None,
    device: str | torch.device = "cuda",
) -> dict:
    """Build a serialized engine from a tensorrt-target ONNX; writes ``out`` and its sidecar and
    returns the sidecar's content. ``max_batch`` defaults to the ONNX's."""
    from maskrt import plugins

    meta, fp16_onnx, canvas, sha, max_batch = check_build_request(
        onnx_path, max_batch, workspace_gib
    )
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise MaskrtError("building a TensorRT engine needs a CUDA GPU (torch sees none)")
    trt = import_tensorrt()
    plugins.load()
    weak = weak_typing()
    if fp16 and not weak and not fp16_onnx:
        raise MaskrtError(
            f"TensorRT {trt.__version__} builds strongly typed networks only: the engine keeps the "
            f"ONNX's precision, and {onnx_path} is fp32. Build without --fp16, or from "
            f"`maskrt export onnx --target tensorrt --fp16`"
        )
    strongly_typed = fp16_onnx or not weak
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        flags = 0
        if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise MaskrtError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors[:2000]}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        if fp16 and weak and not strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        shape = lambda b: (b, 3, canvas, canvas)  # noqa: E731
        profile.set_shape(INPUT, shape(1), shape(max_batch), shape(max_batch))
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
            "precision": "fp16" if (fp16 or fp16_onnx) else "fp32",
            "strongly_typed": strongly_typed,
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


_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


class Engine:
    """A deserialized engine with one execution context, run on torch CUDA tensors in place (the
    input's and outputs' device pointers are bound directly; nothing goes through the host)."""

    def __init__(self, path: str | os.PathLike, device: torch.device):
        from maskrt import plugins

        trt = import_tensorrt()
        plugins.load()
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self.device = device
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                raise MaskrtError(
                    f"{path}: TensorRT {trt.__version__} cannot deserialize this engine "
                    f"(built by another TensorRT version, or for another GPU?)"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if self.inputs != [INPUT]:
            raise MaskrtError(f"{path}: engine inputs {self.inputs}, expected [{INPUT!r}]")
        self.dtypes = {n: _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name] for n in names}
        self.max_batch = int(self.engine.get_tensor_profile_shape(INPUT, 0)[2][0])

    def run(self, images: torch.Tensor, stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        """Outputs by name for a contiguous ``images`` batch on :attr:`device`, enqueued on
        ``stream`` (outputs are allocated on the caller's current stream)."""
        context = self.context
        context.set_input_shape(INPUT, tuple(images.shape))
        context.set_tensor_address(INPUT, images.data_ptr())
        outputs = {}
        for name in self.outputs:
            out = torch.empty(
                tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device
            )
            context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not context.execute_async_v3(stream.cuda_stream):
            raise MaskrtError("TensorRT failed to run the engine (see its log)")
        return outputs
