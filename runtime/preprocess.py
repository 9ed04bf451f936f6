"""Pre-processing in batch on the backend's device: each decoded image is moved there and
letterboxed onto the model's canvas with :func:`maskrt.model.letterbox.letterbox_batch` (the one
letterbox shared with training-time evaluation), giving the uint8 ``[B, 3, S, S]`` the deploy
graph takes. Normalisation happens inside the graph."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from maskrt.model.letterbox import Letterbox, letterbox_batch


def to_device(image: Tensor, device: torch.device) -> Tensor:
    """A uint8 ``[3, H, W]`` image on ``device`` (a no-op when it is there already)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )
    if image.device == device:
        return image
    if device.type == "cuda" and image.device.type == "cpu":
        # One pinned host buffer per image, copied asynchronously. Pillow's pixels are an HWC
        # buffer seen as CHW: pin that buffer as it is and transpose on the device, not the host.
        hwc = image.permute(1, 2, 0)
        if hwc.is_contiguous():
            return hwc.pin_memory().to(device, non_blocking=True).permute(2, 0, 1).contiguous()
        return image.contiguous().pin_memory().to(device, non_blocking=True)
    return image.to(device)


_copies = threading.local()  # each decoding thread's copy stream per device


def copy_to_device(image: Tensor, device: torch.device) -> Tensor:
    """:func:`to_device` on this thread's own CUDA stream, waited for here: a decoding thread
    copies its image from pinned memory while the inference stream runs the previous batch, and
    the batch worker finds the image on the GPU (the ``pinned_copies`` setting)."""
    streams = _copies.__dict__.setdefault("streams", {})
    stream = streams.get(device)
    if stream is None:
        stream = streams[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        out = to_device(image, device)
    stream.synchronize()
    # the inference stream reads it later: the allocator must not hand this memory to the copy
    # stream again before that stream's kernels are done with it
    out.record_stream(torch.cuda.default_stream(device))
    return out


def preprocess(
    images: Sequence[Tensor], canvas: int, fill: tuple[int, int, int], device: torch.device
) -> tuple[Tensor, list[Letterbox]]:
    """Letterbox ``images`` (uint8 ``[3, H, W]``, any device) into one batch on ``device``."""
    if not images:
        raise ValueError("preprocess needs at least one image")
    return letterbox_batch([to_device(im, device) for im in images], canvas, fill)
