"""Letterboxing: the one place that maps images onto the model's square canvas and back.

An image is resized (bilinear, as torchvision's ``GeneralizedRCNNTransform`` does) so its longer
side equals the canvas side, then padded bottom/right with the model's mean colour, which is ~0
after the in-graph normalisation, exactly like torchvision's zero padding after normalisation.
Boxes map back with per-axis ratios, again as torchvision's ``transform.postprocess`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Letterbox:
    """Where one image sits on the canvas: original size and the resized size at the top left."""

    width: int
    height: int
    canvas: int
    resized_width: int
    resized_height: int

    @classmethod
    def fit(cls, width: int, height: int, canvas: int) -> Letterbox:
        scale = canvas / max(width, height)
        # floor(side * scale), as F.interpolate(scale_factor=..., recompute_scale_factor=True)
        resized_w = min(canvas, max(1, math.floor(width * scale)))
        resized_h = min(canvas, max(1, math.floor(height * scale)))
        return cls(width, height, canvas, resized_w, resized_h)

    @property
    def ratio(self) -> tuple[float, float]:
        """(x, y) factors from canvas pixels to original pixels."""
        return self.width / self.resized_width, self.height / self.resized_height


def fill_colour(image_mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The uint8 padding colour that normalises to ~0 for a model with this mean."""
    return tuple(round(m * 255.0) for m in image_mean)  # type: ignore[return-value]


def letterbox_batch(
    images: list[Tensor], canvas: int, fill: tuple[int, int, int]
) -> tuple[Tensor, list[Letterbox]]:
    """Several uint8 ``[3, H, W]`` images (one device) into a uint8 ``[B, 3, S, S]`` batch."""
    out = torch.empty((len(images), 3, canvas, canvas), dtype=torch.uint8, device=images[0].device)
    return out, [_place(image, slot, fill) for image, slot in zip(images, out)]


def _place(image: Tensor, out: Tensor, fill: tuple[int, int, int]) -> Letterbox:
    """Resize ``image`` into the top left of the ``[3, S, S]`` canvas ``out`` and pad the rest."""
    _, height, width = image.shape
    box = Letterbox.fit(width, height, out.shape[-1])
    for channel, value in zip(out, fill):  # scalar fills: no host->device copy, no sync on CUDA
        channel.fill_(value)
    if (box.resized_height, box.resized_width) == (height, width):
        resized = image
    else:
        resized = F.interpolate(
            image[None].float(),
            size=(box.resized_height, box.resized_width),
            mode="bilinear",
            align_corners=False,
        )[0]
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    out[:, : box.resized_height, : box.resized_width] = resized
    return box


def boxes_to_original(boxes: Tensor, box: Letterbox) -> Tensor:
    """Canvas-pixel ``[N, 4]`` x1y1x2y2 boxes to original-image pixels, clipped to the image."""
    rx, ry = box.ratio
    scale = torch.tensor([rx, ry, rx, ry], dtype=boxes.dtype, device=boxes.device)
    out = boxes * scale
    out[:, 0::2] = out[:, 0::2].clamp(0, box.width)
    out[:, 1::2] = out[:, 1::2].clamp(0, box.height)
    return out
