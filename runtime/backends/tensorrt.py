"""The ``tensorrt`` backend: a TensorRT engine built by ``maskrt export engine``.

The engine runs on its own CUDA stream, ordered after the caller's current stream (where the
letterboxed batch was made) and before it again (where post-processing reads the outputs); the
batch and the outputs are torch CUDA tensors bound by device pointer, so nothing is copied through
the host. Any batch of 1 to the engine's profile maximum runs. :class:`ModelInfo` comes from the
engine's JSON sidecar; an engine built for another GPU or TensorRT version is refused with the
reason. The TensorRT runtime API itself is used only in
:mod:`maskrt.runtime.backends.tensorrt_engine`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from maskrt.devices import check_device, check_max_batch
from maskrt.errors import MaskrtError
from maskrt.runtime.backends.base import (
    OUTPUT_NAMES as OUTPUTS,
)
from maskrt.runtime.backends.base import (
    Backend,
    DeployOutputs,
    model_info_from_metadata,
)

log = logging.getLogger("maskrt.backends.tensorrt")


class TensorRTBackend(Backend):
    """``TensorRTBackend("model.plan", device="cuda", max_batch=8)``."""

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike,
        device: torch.device | str = "cuda",
        max_batch: int = 8,
    ):
        from maskrt.export.artifacts import gpu_description, read_sidecar
        from maskrt.runtime.backends.tensorrt_engine import Engine

        path = Path(engine_path)
        device = torch.device(device)
        if device.type != "cuda":
            raise MaskrtError(f"the tensorrt backend runs on a CUDA device, not {str(device)!r}")
        check_device(device)
        if not path.is_file():
            raise MaskrtError(f"{path}: no such engine file")
        check_max_batch(max_batch)
        self.device = torch.device(
            "cuda", device.index if device.index is not None else torch.cuda.current_device()
        )
        sidecar = read_sidecar(path)
        self.metadata = {k: str(v) for k, v in sidecar.items()}
        self.info = model_info_from_metadata(self.metadata, str(path))
        here = gpu_description(self.device)
        if sidecar.get("compute_capability") != here["compute_capability"]:
            raise MaskrtError(
                f"{path} was built for {sidecar.get('gpu_name')} (compute capability "
                f"{sidecar.get('compute_capability')}); this is {here['gpu_name']} "
                f"({here['compute_capability']}): "
                f"build an engine here with `maskrt export engine`"
            )
        self.engine = Engine(path, self.device)
        if sorted(self.engine.outputs) != sorted(OUTPUTS):
            raise MaskrtError(
                f"{path}: outputs {self.engine.outputs} are not the deploy graph's "
                f"({', '.join(OUTPUTS)})"
            )
        if max_batch > self.engine.max_batch:
            log.warning(
                "%s was built for batches up to %d; serving at most %d images per batch",
                path,
                self.engine.max_batch,
                self.engine.max_batch,
            )
        self.max_batch = min(max_batch, self.engine.max_batch)
        self.stream = torch.cuda.Stream(self.device)
        log.info(
            "tensorrt backend ready: %s on %s (%s, TensorRT %s, batch 1..%d)",
            self.info.name,
            self.device,
            sidecar.get("precision"),
            sidecar.get("tensorrt_version"),
            self.max_batch,
        )

    def infer(self, images: Tensor) -> DeployOutputs:
        self.check_images(images)
        images = images.to(self.device, non_blocking=True).contiguous()
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        outputs = self.engine.run(images, self.stream)  # allocated on the caller's stream
        images.record_stream(self.stream)
        for out in outputs.values():
            out.record_stream(self.stream)
        caller.wait_stream(self.stream)
        return DeployOutputs(*(outputs[name] for name in OUTPUTS))
