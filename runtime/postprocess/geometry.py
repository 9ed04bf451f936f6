"""Paste geometry on the host (numpy): torchvision's ``expand_boxes`` / ``paste_mask_in_image`` in
integer pixels, and the bilinear source tables of one resize axis, as ATen computes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PasteGeometry:
    """Where each mask goes, all int64 ``[N]``.

    ``bx0, by0``: the expanded integer box's top-left (may be negative); ``bw, bh``: the size the
    padded mask is resized to; ``wx0, wy0, ww, wh``: the window (box clipped to the image) in
    image pixels; ``img_h, img_w``: the image size.
    """

    bx0: np.ndarray
    by0: np.ndarray
    bw: np.ndarray
    bh: np.ndarray
    wx0: np.ndarray
    wy0: np.ndarray
    ww: np.ndarray
    wh: np.ndarray
    img_h: np.ndarray
    img_w: np.ndarray

    def __len__(self) -> int:
        return len(self.bx0)


def expand_boxes_int(boxes: np.ndarray, mask_size: int, padding: int = 1) -> np.ndarray:
    """torchvision's ``expand_boxes(boxes, (M + 2p) / M).to(int64)``, same float32 operations."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.float32(float(mask_size + 2 * padding) / mask_size)  # torch casts it to float32
    half = np.float32(0.5)
    w_half = (b[:, 2] - b[:, 0]) * half * scale
    h_half = (b[:, 3] - b[:, 1]) * half * scale
    x_c = (b[:, 2] + b[:, 0]) * half
    y_c = (b[:, 3] + b[:, 1]) * half
    out = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)
    return out.astype(np.int64)  # truncation toward zero, as Tensor.to(torch.int64)


def paste_geometry(
    boxes: np.ndarray, img_h: np.ndarray, img_w: np.ndarray, mask_size: int
) -> PasteGeometry:
    """Geometry of pasting ``M x M`` masks into ``[N, 4]`` float32 boxes (image pixels)."""
    e = expand_boxes_int(boxes, mask_size)
    img_h = np.broadcast_to(np.asarray(img_h, dtype=np.int64), (len(e),))
    img_w = np.broadcast_to(np.asarray(img_w, dtype=np.int64), (len(e),))
    bw = np.maximum(e[:, 2] - e[:, 0] + 1, 1)
    bh = np.maximum(e[:, 3] - e[:, 1] + 1, 1)
    wx0 = np.maximum(e[:, 0], 0)
    wy0 = np.maximum(e[:, 1], 0)
    # torchvision slices [max(x0, 0), min(x1 + 1, W)); a box wholly outside the image (never
    # produced by boxes_to_original, which clips) gives an empty window here.
    ww = np.clip(np.minimum(e[:, 2] + 1, img_w) - wx0, 0, None)
    wh = np.clip(np.minimum(e[:, 3] + 1, img_h) - wy0, 0, None)
    ww = np.minimum(ww, np.maximum(bw - (wx0 - e[:, 0]), 0))
    wh = np.minimum(wh, np.maximum(bh - (wy0 - e[:, 1]), 0))
    return PasteGeometry(e[:, 0], e[:, 1], bw, bh, wx0, wy0, ww, wh, img_h.copy(), img_w.copy())


def axis_tables(
    n_in: int,
    out_size: np.ndarray,
    first: np.ndarray,
    length: np.ndarray,
    count: int,
    src_fma: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (``align_corners=False``) source indices and weights along one axis.

    Row ``j`` covers output positions ``first[j] + [0, count)`` of an axis resized from ``n_in``
    to ``out_size[j]``; positions from ``length[j]`` on (padding) get index 0 and weight 0, which
    makes the value there an exact 0. As ATen computes them:
    ``src = scale * (d + 0.5) - 0.5`` in float32 with ``scale = float(n_in) / out``, fused
    (one rounding) when ``src_fma``, then clamped at 0, ``i0 = min(floor(src), n_in - 1)``,
    ``l1 = src - i0``, ``l0 = 1 - l1``, ``i1 = i0 + (i0 < n_in - 1)``.
    Returns ``(i0, i1, l0, l1)``, ``[len(first), count]``, int64 / float32.
    """
    out_size = np.asarray(out_size, dtype=np.int64)[:, None]
    pos = np.arange(count, dtype=np.int64)[None, :]
    d = np.asarray(first, dtype=np.int64)[:, None] + pos
    valid = (pos < np.asarray(length, dtype=np.int64)[:, None]) & (d < out_size)
    scale = np.float32(n_in) / out_size.astype(np.float32)
    if src_fma:
        # scale * (d + 0.5) and the subtraction are exact in float64: one rounding, as an FMA.
        src = (scale.astype(np.float64) * (d + 0.5) - 0.5).astype(np.float32)
    else:
        src = (scale * (d.astype(np.float32) + np.float32(0.5))).astype(np.float32)
        src -= np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    l0 = np.float32(1.0) - l1
    i1 = i0 + (i0 < n_in - 1)
    i0 = np.where(valid, i0, 0)
    i1 = np.where(valid, i1, 0)
    l0 = np.where(valid, l0, np.float32(0.0)).astype(np.float32)
    l1 = np.where(valid, l1, np.float32(0.0)).astype(np.float32)
    return i0, i1, l0, l1
