"""The ``onnxruntime`` backend: an ``onnxruntime``-target ONNX file (``maskrt export onnx``).

A ``tensorrt``-target file also runs (its plugin nodes through the Python implementation of
:func:`maskrt.export.tensorrt_onnx.register_python_ops`, on the CPU): that is how the TensorRT graph
is checked without a GPU, not a way to serve it.

- Execution provider: CUDA on a CUDA device when the installed ONNX Runtime has it
  (``onnxruntime-gpu``), else the CPU; a CUDA device without the CUDA provider falls back to the CPU
  with a warning (the backend's :attr:`device` then says ``cpu``, so the server pre- and
  post-processes there).
- Session options for throughput: all graph optimisations, intra-op threads = the cores this
  process may use (or ``threads``), sleeping rather than spinning between operators (unless
  ``spinning``), one inter-op thread (the graph is one sequential chain), memory pattern and CPU
  arena on.
- On CUDA, I/O binding: the uint8 image batch is bound straight from the torch CUDA tensor
  (``data_ptr``), outputs are preallocated torch CUDA tensors that ONNX Runtime writes into, and ONNX
  Runtime runs on torch's current CUDA stream, so nothing is copied through the host.
- :class:`ModelInfo` comes from the file's ``maskrt.*`` metadata.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from maskrt.devices import check_device, check_max_batch, usable_cores
from maskrt.errors import MaskrtError
from maskrt.export.artifacts import maskrt_entries, read_metadata
from maskrt.runtime.backends.base import (
    OUTPUT_NAMES,
    Backend,
    DeployOutputs,
    model_info_from_metadata,
)

log = logging.getLogger("maskrt.backends.onnxruntime")

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
}
_TORCH = {
    np.float32: torch.float32,
    np.float16: torch.float16,
    np.int32: torch.int32,
    np.int64: torch.int64,
    np.uint8: torch.uint8,
}


def session_options(threads: int | None = None, *, spinning: bool = False):
    """The server's ONNX Runtime session options: full graph optimisation, sequential execution,
    ``threads`` intra-op threads (default: the usable cores) that sleep rather than spin between
    operators unless ``spinning`` (spinning threads take the cores that decoding and
    post-processing need; on a small VM they slow the graph itself: docs/benchmarks.md),
    errors-only logging."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or usable_cores())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.enable_mem_pattern = True
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3  # errors only: ORT warns about every CPU fallback node
    return options


def _load(path: Path):
    """The ``ModelProto`` of an ONNX file, or None (ONNX Runtime's own load error is the one to
    report)."""
    import onnx

    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return None


class OnnxRuntimeBackend(Backend):
    """``OnnxRuntimeBackend("model.onnx", device="cuda", max_batch=8)``."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        device: torch.device | str = "cpu",
        max_batch: int = 8,
        *,
        threads: int | None = None,
        spinning: bool = False,
    ):
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise MaskrtError(f"{path}: no such ONNX file")
        check_max_batch(max_batch)
        device = check_device(device)
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = device.index if device.index is not None else torch.cuda.current_device()
                device = torch.device("cuda", index)
                stream = torch.cuda.current_stream(device).cuda_stream
                providers = [
                    (
                        "CUDAExecutionProvider",
                        {
                            "device_id": index,
                            "user_compute_stream": str(
                                stream
                            ),  # torch's stream: no cross-stream syncs
                            "has_user_compute_stream": "1",
                            "cudnn_conv_algo_search": "EXHAUSTIVE",  # picked once per shape, at warm-up
                            "cudnn_conv_use_max_workspace": "1",
                            "arena_extend_strategy": "kSameAsRequested",
                        },
                    ),
                    "CPUExecutionProvider",
                ]
            else:
                log.warning(
                    "device %s asked for, but this ONNX Runtime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu); running on the CPU",
                    device,
                )
                device = torch.device("cpu")
        self.device = device

        options = session_options(threads, spinning=spinning)
        proto = _load(path)
        if proto is not None and read_metadata(proto).get("target") == "tensorrt":
            from maskrt.export.tensorrt_onnx import register_python_ops

            log.warning(
                "%s is a tensorrt-target graph: running its plugin nodes in Python on the "
                "CPU (for checks; serve it with TensorRT)",
                path,
            )
            options.register_custom_ops_library(register_python_ops(proto))
        del proto
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph / ... types
            raise MaskrtError(
                f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:300]})"
            ) from None

        self.metadata = maskrt_entries(self.session.get_modelmeta().custom_metadata_map)
        self.info = model_info_from_metadata(self.metadata, str(path))
        if self.metadata["target"] not in ("onnxruntime", "tensorrt"):
            raise MaskrtError(
                f"{path}: exported for target {self.metadata['target']!r}; the onnxruntime "
                f"backend serves the onnxruntime target (`maskrt export onnx --target "
                f"onnxruntime`)"
            )
        file_max = int(self.metadata.get("max_batch", max_batch))
        if max_batch > file_max:
            log.warning(
                "%s was exported for batches up to %d; serving at most %d images per batch",
                path,
                file_max,
                file_max,
            )
        self.max_batch = min(max_batch, file_max)
        outputs = {o.name: o for o in self.session.get_outputs()}
        if set(outputs) != set(OUTPUT_NAMES) or [i.name for i in self.session.get_inputs()] != [
            "images"
        ]:
            raise MaskrtError(
                f"{path}: inputs/outputs are not the deploy graph's (images -> "
                f"{', '.join(OUTPUT_NAMES)})"
            )
        self._dtypes = {name: _NUMPY[outputs[name].type] for name in OUTPUT_NAMES}
        self._io = self.device.type == "cuda"
        log.info(
            "onnxruntime backend ready: %s on %s (%s, %d threads)",
            self.info.name,
            self.device,
            self.session.get_providers()[0],
            options.intra_op_num_threads,
        )

    def _shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        k, m = self.info.max_detections, self.info.mask_size
        return {
            "num_detections": (batch,),
            "boxes": (batch, k, 4),
            "scores": (batch, k),
            "classes": (batch, k),
            "masks": (batch, k, m, m),
        }

    def infer(self, images: Tensor) -> DeployOutputs:
        self.check_images(images)
        batch = images.shape[0]
        if not self._io:
            feed = images.detach().to("cpu").contiguous().numpy()
            results = self.session.run(list(OUTPUT_NAMES), {"images": feed})
            return DeployOutputs(*(torch.from_numpy(r) for r in results))
        return self._infer_cuda(images.to(self.device).contiguous(), batch)

    def _infer_cuda(self, images: Tensor, batch: int) -> DeployOutputs:
        index = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(
            "images", "cuda", index, np.uint8, tuple(images.shape), images.data_ptr()
        )
        outputs = {}
        for name, shape in self._shapes(batch).items():
            dtype = self._dtypes[name]
            tensor = torch.empty(shape, dtype=_TORCH[dtype], device=self.device)
            binding.bind_output(name, "cuda", index, dtype, shape, tensor.data_ptr())
            outputs[name] = tensor
        self.session.run_with_iobinding(binding)
        return DeployOutputs(*(outputs[name] for name in OUTPUT_NAMES))
