"""The interface every backend (``torch``, ``onnxruntime``, ``tensorrt``) implements.

A backend runs the deploy graph (docs/architecture.md, "The deploy graph") on its own device: uint8
letterboxed images in, fixed-size detections out, all as torch tensors on that device so that
pre- and post-processing stay on the device too.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from maskrt.errors import MaskrtError
from maskrt.model.deploy import OUTPUT_NAMES, DeployOutputs

__all__ = [
    "OUTPUT_NAMES",
    "Backend",
    "DeployOutputs",
    "Fallback",
    "ModelInfo",
    "model_info_from_metadata",
]


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is: served by ``GET /v1/model`` and labelled in metrics."""

    name: str
    version: str  # first 12 hex digits of the checkpoint's sha256
    classes: tuple[str, ...]  # index = class id; 0 is the background
    canvas: int
    mask_size: int
    max_detections: int
    image_mean: tuple[float, float, float]
    weights_verified: bool = False  # the checkpoint's tensors matched their recorded digest


@dataclass(frozen=True)
class Fallback:
    """Why this backend serves instead of the one ``backend=auto`` tried first: a degraded server
    that ``GET /v1/model`` and ``maskrt_backend_fallback`` show."""

    wanted: str  # the backend that failed to open: tensorrt
    reason: str  # its error, one line


class Backend(ABC):
    """Runs the deploy graph on one device for batches of 1 to ``max_batch`` images."""

    name: str
    device: torch.device
    info: ModelInfo
    max_batch: int
    fallback: Fallback | None = None  # set by open_backend when it serves instead of another

    @abstractmethod
    def infer(self, images: Tensor) -> DeployOutputs:
        """``images``: uint8 ``[B, 3, S, S]`` on :attr:`device`, ``1 <= B <= max_batch``."""

    def check_images(self, images: Tensor) -> None:
        """A MaskrtError unless ``images`` is a uint8 ``[B, 3, S, S]`` batch with
        ``1 <= B <= max_batch``."""
        size = self.info.canvas
        if (
            images.dtype != torch.uint8
            or images.dim() != 4
            or tuple(images.shape[1:]) != (3, size, size)
        ):
            raise MaskrtError(
                f"expected uint8 images [B, 3, {size}, {size}], got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        if not 1 <= images.shape[0] <= self.max_batch:
            raise MaskrtError(
                f"batch of {images.shape[0]} images; this backend takes 1 to {self.max_batch}"
            )

    def warmup_batch_sizes(self) -> list[int]:
        """Batch sizes to run once before the server turns ready: every size on a GPU (engines,
        cuDNN's algorithm search and CUDA graphs specialise per shape), one run on the CPU, where
        the first run initialises kernels and thread pools for every shape (an R50-FPN took
        minutes to warm up per batch size for nothing)."""
        if self.device.type == "cuda":
            return list(range(1, self.max_batch + 1))
        return [1]


def model_info_from_metadata(meta: dict[str, str], source: str) -> ModelInfo:
    """The :class:`ModelInfo` of a maskrt ONNX file's metadata (``maskrt.*`` keys, prefix
    removed)."""
    missing = [
        k
        for k in (
            "classes",
            "canvas",
            "mask_size",
            "max_detections",
            "config",
            "checkpoint_sha256",
            "target",
        )
        if k not in meta
    ]
    if missing:
        raise MaskrtError(
            f"{source}: not a maskrt ONNX file (metadata maskrt.{missing[0]} is missing); "
            f"write one with `maskrt export onnx`"
        )
    try:
        config = json.loads(meta["config"])
        info = ModelInfo(
            name=str(config["name"]),
            version=meta["checkpoint_sha256"][:12],
            classes=tuple(json.loads(meta["classes"])),
            canvas=int(meta["canvas"]),
            mask_size=int(meta["mask_size"]),
            max_detections=int(meta["max_detections"]),
            image_mean=_mean(config["image_mean"]),
            weights_verified=meta.get("weights_verified") == "true",
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise MaskrtError(f"{source}: malformed maskrt metadata ({exc})") from None
    return info


def _mean(values: list[float]) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b
