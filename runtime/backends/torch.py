"""The ``torch`` backend: the deploy graph (``model/deploy.py``) in PyTorch, on CPU or CUDA.

It runs exactly the graph that is exported to ONNX and built into TensorRT engines, under
``torch.inference_mode``; on CUDA ``fp16=True`` runs it under float16 autocast (box arithmetic,
NMS and RoI coordinates stay float32 inside the graph). Outputs follow the deploy-graph contract:
detections padded to ``K`` with the ``M x M`` mask probabilities of each detection's class;
pasting happens once, in :mod:`maskrt.runtime.postprocess`, for every backend.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor

from maskrt.devices import check_device, check_max_batch
from maskrt.errors import MaskrtError
from maskrt.runtime.backends.base import Backend, DeployOutputs, ModelInfo

log = logging.getLogger("maskrt.backends.torch")


def model_info(loaded, graph) -> ModelInfo:
    """:class:`ModelInfo` of a ``LoadedModel`` served through ``graph`` (a ``DeployGraph``)."""
    cfg = loaded.config
    return ModelInfo(
        name=cfg.name,
        version=loaded.version,
        classes=tuple(cfg.classes),
        canvas=graph.canvas,
        mask_size=graph.mask_size,
        max_detections=graph.max_detections,
        image_mean=tuple(cfg.image_mean),
        weights_verified=loaded.weights_verified,
    )


class TorchBackend(Backend):
    """``TorchBackend(load_checkpoint(path), device="cuda", max_batch=8)``."""

    name = "torch"

    def __init__(
        self,
        loaded,
        device: torch.device | str = "cpu",
        max_batch: int = 8,
        *,
        fp16: bool = False,
        max_detections: int | None = None,
    ):
        from maskrt.model.deploy import deploy_graph

        self.device = check_device(device)
        check_max_batch(max_batch)
        if fp16 and self.device.type != "cuda":
            raise MaskrtError("fp16 autocast needs a CUDA device")
        self.max_batch = int(max_batch)
        self.fp16 = fp16
        self.graph = deploy_graph(loaded, max_detections=max_detections).to(self.device)
        self.info = model_info(loaded, self.graph)
        log.info(
            "torch backend ready: %s on %s%s",
            self.info.name,
            self.device,
            " (fp16 autocast)" if fp16 else "",
        )

    def _autocast(self):
        if self.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def infer(self, images: Tensor) -> DeployOutputs:
        self.check_images(images)
        with self._autocast():
            out = self.graph(images.to(self.device, non_blocking=True))
        return DeployOutputs(*out)
