"""maskrt's CUDA kernels as the CUDA implementations of the deploy graph's two custom ops.

``torch.ops.maskrt.multilevel_roi_align`` and ``torch.ops.maskrt.grouped_nms`` run composites of
torchvision ops on every device (``model/roi_align.py``, ``model/deploy.py``); both size their work
by a count read back from the GPU, which costs a host sync per call and makes a CUDA graph
capture fail. :func:`register` puts a CUDA kernel in front of each (``torch.library.register_kernel``):
the plugin's multi-level RoIAlign (``plugins/roi_align/roi_align_kernel.cu``, one launch for every
level) and a grouped NMS that finishes its greedy sweep on the GPU (``plugins/nms``), both built by
:func:`maskrt.plugins.torch_ext.load_extension` (nvcc, on first use).

The kernels run only inside :func:`use_kernels` (per thread); elsewhere, and on the CPU, the
registered CUDA implementation calls the composite, so a torch backend with ``cuda_roi_align`` off
runs exactly what it ran before, even in a process where another backend registered them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from maskrt.model.deploy import grouped_nms_composite, limit_per_group
from maskrt.model.roi_align import OP_NAME, multilevel_roi_align_composite

_state = threading.local()
_extension = None  # the built extension module (load())


def kernels_enabled() -> bool:
    """Whether this thread is inside :func:`use_kernels`."""
    return getattr(_state, "enabled", False)


@contextlib.contextmanager
def use_kernels(enabled: bool = True) -> Iterator[None]:
    """Run the ops' CUDA calls of this thread through maskrt's kernels (``enabled``) or the
    composites, for the duration."""
    before = kernels_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = before


@functools.cache
def register() -> None:
    """Register the two CUDA implementations (once per process; nothing is built here)."""
    torch.library.register_kernel(OP_NAME, "cuda", _roi_align_cuda)
    torch.library.register_kernel("maskrt::grouped_nms", "cuda", _grouped_nms_cuda)


def load(build_directory: str | None = None) -> None:
    """Register the implementations and build the extension now (nvcc, for this machine's GPUs;
    torch caches the build across processes), so that a missing toolkit is an error at start-up,
    not at the first batch."""
    global _extension
    register()
    if _extension is None:
        from maskrt.plugins.torch_ext import load_extension

        _extension = load_extension(build_directory)


def _kernels():
    if _extension is None:
        load()
    return _extension


def _roi_align_cuda(rois: Tensor, features: list[Tensor], *attributes: Any) -> Tensor:
    """``attributes``: the op's, positional (output size, sampling ratio, aligned, then those of
    the canonical scale, canonical level and first level that the call gives)."""
    if not kernels_enabled():
        return multilevel_roi_align_composite(rois, features, *attributes)
    dtype = features[0].dtype
    if dtype == torch.bfloat16:  # the kernel reads float32 or float16: pool in float32, round once
        features = [f.float() for f in features]
    out = _kernels().multilevel_roi_align(rois.float(), features, *attributes)
    return out.to(dtype)


def _grouped_nms_cuda(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_group: int
) -> Tensor:
    if not kernels_enabled():
        return grouped_nms_composite(boxes, scores, iou_threshold, score_threshold, max_per_group)
    keep = _kernels().grouped_nms_keep(
        boxes.float(), scores.float(), iou_threshold, score_threshold
    )
    return limit_per_group(keep, scores, max_per_group)
