"""Running TensorRT engines: the runtime half of the TensorRT API (the building half is
:mod:`maskrt.export.tensorrt`; the engine's JSON sidecar is :mod:`maskrt.export.artifacts`).

:class:`Engine` deserializes a plan with maskrt's plugin library loaded and runs it on torch CUDA
tensors bound by device pointer (TensorRT 10 and 11 Python API: named I/O tensors,
``execute_async_v3``). ``tensorrt`` is imported when an engine is opened, never on import.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from maskrt import plugins
from maskrt.errors import MaskrtError
from maskrt.export.artifacts import INPUT_NAME

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
        trt = plugins.import_tensorrt()
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
        if self.inputs != [INPUT_NAME]:
            raise MaskrtError(f"{path}: engine inputs {self.inputs}, expected [{INPUT_NAME!r}]")
        self.dtypes = {n: _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name] for n in names}
        self.max_batch = int(self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])

    def run(self, images: torch.Tensor, stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        """Outputs by name for a contiguous ``images`` batch on :attr:`device`, enqueued on
        ``stream`` (outputs are allocated on the caller's current stream of that device). The
        engine's device is made current for the call: TensorRT enqueues on the current device,
        which need not be this one (any GPU but 0, called from a thread that never chose)."""
        context = self.context
        with torch.cuda.device(self.device):
            context.set_input_shape(INPUT_NAME, tuple(images.shape))
            context.set_tensor_address(INPUT_NAME, images.data_ptr())
            outputs = {}
            for name in self.outputs:
                out = torch.empty(
                    tuple(context.get_tensor_shape(name)),
                    dtype=self.dtypes[name],
                    device=self.device,
                )
                context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            if not context.execute_async_v3(stream.cuda_stream):
                raise MaskrtError("TensorRT failed to run the engine (see its log)")
        return outputs
