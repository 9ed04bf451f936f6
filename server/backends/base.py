"""The interface every backend (``torch``, ``onnxruntime``, ``tensorrt``) implements.

A backend runs the deploy graph (DESIGN.md, "Deploy graph contract") on its own device: uint8
letterboxed images in, fixed-size detections out, all as torch tensors on that device so that
pre- and post-processing stay on the device too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from maskrt.errors import MaskrtError


class DeployOutputs(NamedTuple):
    """The deploy graph's outputs, padded to ``K`` rows past ``num_detections``."""

    num_detections: Tensor  # int32 [B]
    boxes: Tensor  # float32 [B, K, 4], x1 y1 x2 y2 in canvas pixels
    scores: Tensor  # float32 [B, K], descending
    classes: Tensor  # int32 [B, K], 1-based
    masks: Tensor  # float32 or float16 [B, K, M, M], probabilities


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


class Backend(ABC):
    """Runs the deploy graph on one device for batches of 1 to ``max_batch`` images."""

    name: str
    device: torch.device
    info: ModelInfo
    max_batch: int

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
        """Batch sizes to run once before the server turns ready (engines may specialise)."""
        return list(range(1, self.max_batch + 1))
