"""The ``torch`` backend: the deploy graph (``model/deploy.py``) in PyTorch, on CPU or CUDA.

It runs exactly the graph that is exported to ONNX and built into TensorRT engines, under
``torch.inference_mode``; ``precision="fp16"`` (CUDA) or ``"bf16"`` runs it under autocast (box
arithmetic, NMS and RoI coordinates stay float32 inside the graph), and the CUDA fast path's
other settings are :class:`TorchBackend`'s. Outputs follow the deploy-graph contract:
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
from maskrt.runtime.options import GRAPHS_NEED_KERNELS

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


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """``TorchBackend(load_checkpoint(path), device="cuda", max_batch=8)``.

    The CUDA fast path's settings (``RuntimeOptions``; each off by default, and each off leaves
    the plain path as it was): ``precision`` ``fp16``/``bf16`` autocasts the backbone and heads
    (boxes, scores and NMS stay float32 in the graph); ``channels_last`` lays the convolutions'
    weights and input out as NHWC; ``cuda_roi_align`` runs the two custom ops through maskrt's
    CUDA kernels (:mod:`~maskrt.runtime.backends.cuda_ops`); ``cuda_graphs`` replays the graph as
    one CUDA graph per batch size (:mod:`~maskrt.runtime.backends.cuda_graphs`; needs
    ``cuda_roi_align``).
    """

    name = "torch"

    def __init__(
        self,
        loaded,
        device: torch.device | str = "cpu",
        max_batch: int = 8,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        cuda_roi_align: bool = False,
        cuda_graphs: bool = False,
        max_detections: int | None = None,
    ):
        from maskrt.model.deploy import deploy_graph

        if cuda_graphs and not cuda_roi_align:
            raise MaskrtError(GRAPHS_NEED_KERNELS)
        self.device = check_device(device)
        check_max_batch(max_batch)
        if precision not in PRECISIONS:
            raise MaskrtError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        cuda = self.device.type == "cuda"
        if precision == "fp16" and not cuda:
            raise MaskrtError("fp16 autocast needs a CUDA device (bf16 runs on the CPU)")
        if (cuda_roi_align or cuda_graphs) and not cuda:
            raise MaskrtError("cuda_roi_align and cuda_graphs need a CUDA device")
        self.max_batch = int(max_batch)
        self.precision = precision
        self.channels_last = channels_last
        self.cuda_roi_align = cuda_roi_align
        self.graph = deploy_graph(loaded, max_detections=max_detections).to(self.device)
        if channels_last:
            self.graph = self.graph.to(memory_format=torch.channels_last)
        self.info = model_info(loaded, self.graph)
        if cuda_roi_align:
            from maskrt.runtime.backends import cuda_ops

            cuda_ops.load()
        self.graphed = None
        if cuda_graphs:
            from maskrt.runtime.backends.cuda_graphs import GraphedDeploy

            shape = (3, self.info.canvas, self.info.canvas)
            with torch.inference_mode():
                self.graphed = GraphedDeploy(self._run, shape, self.max_batch, self.device)
        settings = [
            name
            for name, on in (
                (precision, precision != "fp32"),
                ("channels_last", channels_last),
                ("cuda_roi_align", cuda_roi_align),
                ("cuda_graphs", cuda_graphs),
            )
            if on
        ]
        log.info(
            "torch backend ready: %s on %s%s",
            self.info.name,
            self.device,
            f" ({', '.join(settings)})" if settings else "",
        )

    def _run(self, images: Tensor) -> DeployOutputs:
        """The deploy graph under this backend's settings (``images`` on :attr:`device`)."""
        with contextlib.ExitStack() as stack:
            if self.precision != "fp32":
                # no weight cache under CUDA graphs: a cached cast is freed before a replay
                stack.enter_context(
                    torch.autocast(
                        self.device.type,
                        dtype=PRECISIONS[self.precision],
                        cache_enabled=not (
                            self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
                        ),
                    )
                )
            if self.cuda_roi_align:
                from maskrt.runtime.backends.cuda_ops import use_kernels

                stack.enter_context(use_kernels())
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            return DeployOutputs(*self.graph(images))

    @torch.inference_mode()
    def infer(self, images: Tensor) -> DeployOutputs:
        self.check_images(images)
        images = images.to(self.device, non_blocking=True)
        if self.graphed is not None:
            return self.graphed(images)
        return self._run(images)
