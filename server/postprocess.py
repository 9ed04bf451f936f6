"""Post-processing of the deploy graph's outputs: the one place that turns them into detections.

Per image: keep the valid rows with ``score >= score_threshold`` (at most ``max_detections``, in
the graph's descending score order), map the boxes back to the original image with
:func:`maskrt.model.letterbox.boxes_to_original`, paste each ``M x M`` mask into its box, threshold
it and COCO-RLE-encode it. Both the server and the evaluation call :func:`postprocess_batch`
(or :func:`postprocess_image`).

The mask is exactly what torchvision's eager Mask R-CNN gives, as its detection references
binarise it for COCO evaluation::

    paste_masks_in_image(masks[:, None], boxes_orig, (H, W))[:, 0] > 0.5

i.e. pasted in original-image pixels with the original-image boxes, and ``> 0.5`` (strictly, as
``references/detection/coco_eval.py``); float16 masks are widened to float32 first (exactly).
torchvision pads the mask by one zero pixel on each side, scales the box by ``(M + 2) / M`` about
its centre in float32, truncates the corners to integers, resizes the padded mask to
``(y1 - y0 + 1, x1 - x0 + 1)`` with ``F.interpolate(bilinear, align_corners=False)`` and pastes
the part inside the image.

Here only the *window* (the box clipped to the image) is computed, on the masks' device, for all
masks at once, and only the run boundaries of the thresholded window (column-major transitions)
come back to the host; :mod:`maskrt.server.rle` folds the zeros outside the window into the runs.
No full-image mask exists anywhere.

Exactness. A bilinear value can sit within an ulp of 0.5, so equality with torchvision needs the
same float32 arithmetic as ``F.interpolate`` on that device, and that differs: the CPU kernel is
built per instruction set (AVX2/AVX-512 builds contract ``a*b + c`` into fused multiply-adds, the
baseline build does not) and takes another code path when ``h + w <= 128``; CUDA has its own.
The vectorised paste therefore evaluates one of a few *recipes* (operation order, fused or not,
fused multiply-adds emulated exactly through float64), and :func:`recipes_for` picks, once per
device and regime, the recipe that reproduces ``F.interpolate`` bit for bit on a set of probes.
Where none does, that regime falls back to calling ``F.interpolate`` per box (exact by
construction, slower on a GPU). On the CPU the per-box ``F.interpolate`` path is also the faster
one and is the default there (see :func:`paste_strategy`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskrt.model.letterbox import Letterbox, boxes_to_original
from maskrt.server.backends.base import DeployOutputs
from maskrt.server.rle import rle_from_transitions

# torchvision's F.interpolate picks another CPU kernel when out_h + out_w <= 128.
SMALL_SUM = 128
_STRATEGIES = ("auto", "vectorized", "interpolate")


# ---------------------------------------------------------------------------------------------
# Geometry (host, numpy): torchvision's expand_boxes / paste_mask_in_image in integer pixels.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Recipes: float32 evaluation orders of the bilinear value, and their calibration per device.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One float32 evaluation order of bilinear interpolation.

    ``kind="separable"``: rows first, ``t = c0*b0 + c1*b1`` along x for the two source rows, then
    ``v = t0*a0 + t1*a1`` along y (ATen's generic CPU kernel; the CUDA kernel has the same shape).
    ``kind="chain"``: ``v = i00*w00 + i01*w01 + i10*w10 + i11*w11`` with ``w = a*b`` (ATen's CPU
    kernel for small outputs). ``mode``: ``plain`` rounds every operation; ``fma0`` fuses the
    first product into the sum, ``fma1`` the second (separable); for chains ``fma`` is
    ``fma(i11, w11, fma(i10, w10, fma(i00, w00, i01 * w01)))``.
    """

    kind: str
    src_fma: bool
    h_mode: str = "plain"
    v_mode: str = "plain"


_SEPARABLE_MODES = ("fma0", "plain", "fma1")
CANDIDATES: tuple[Recipe, ...] = (
    Recipe("separable", True, "fma0", "fma0"),  # CPU AVX2 / AVX-512 builds
    Recipe("separable", False, "plain", "plain"),  # CPU baseline build
    Recipe("chain", True, "fma", "fma"),  # CPU AVX2 / AVX-512 builds, h + w <= 128
    Recipe("chain", False, "plain", "plain"),  # CPU baseline build, h + w <= 128
    *(
        Recipe("separable", s, h, v)
        for s in (True, False)
        for h in _SEPARABLE_MODES
        for v in _SEPARABLE_MODES
        if not (h == v and (h, s) in (("fma0", True), ("plain", False)))
    ),
)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 ``a * b + c`` with one rounding: the product is exact in float64, the sum is
    rounded once to float64 then to float32 (a double rounding that can only matter when
    ``a * b + c`` lies within 2^-53 relative of a float32 rounding midpoint)."""
    r = a.to(torch.float64) * b.to(torch.float64)
    r += c
    return r.to(torch.float32)


def _combine(p: Tensor, wp: Tensor, q: Tensor, wq: Tensor, mode: str) -> Tensor:
    if mode == "plain":
        r = p * wp
        r += q * wq
        return r
    if mode == "fma0":
        return _fma(p, wp, q * wq)
    if mode == "fma1":
        return _fma(q, wq, p * wp)
    raise ValueError(f"unknown combine mode {mode!r}")


def _emulate(
    padded: Tensor, cols: tuple[Tensor, ...], rows: tuple[Tensor, ...], recipe: Recipe
) -> Tensor:
    """Bilinear values ``[n, Wc, Hr]`` (column-major windows) of padded masks ``[n, S, S]``.

    ``cols = (x0, x1, b0, b1)`` are ``[n, Wc]``, ``rows = (y0, y1, a0, a1)`` are ``[n, Hr]``
    (from :func:`axis_tables`); zero weights give exact zeros.
    """
    n, s, _ = padded.shape
    x0, x1, b0, b1 = cols
    y0, y1, a0, a1 = rows
    wc, hr = x0.shape[1], y0.shape[1]
    if recipe.kind == "separable":
        mt = padded.transpose(1, 2)  # [n, x, y]
        c0 = torch.gather(mt, 1, x0[:, :, None].expand(n, wc, s))
        c1 = torch.gather(mt, 1, x1[:, :, None].expand(n, wc, s))
        hx = _combine(c0, b0[:, :, None], c1, b1[:, :, None], recipe.h_mode)  # [n, Wc, S]
        g0 = torch.gather(hx, 2, y0[:, None, :].expand(n, wc, hr))
        g1 = torch.gather(hx, 2, y1[:, None, :].expand(n, wc, hr))
        return _combine(g0, a0[:, None, :], g1, a1[:, None, :], recipe.v_mode)
    if recipe.kind == "chain":
        flat = padded.reshape(n, s * s)

        def tap(yi: Tensor, xi: Tensor) -> Tensor:
            idx = (yi[:, None, :] * s + xi[:, :, None]).reshape(n, wc * hr)
            return torch.gather(flat, 1, idx).view(n, wc, hr)

        w00 = a0[:, None, :] * b0[:, :, None]
        w01 = a0[:, None, :] * b1[:, :, None]
        w10 = a1[:, None, :] * b0[:, :, None]
        w11 = a1[:, None, :] * b1[:, :, None]
        i00, i01, i10, i11 = tap(y0, x0), tap(y0, x1), tap(y1, x0), tap(y1, x1)
        if recipe.h_mode == "fma":
            return _fma(i11, w11, _fma(i10, w10, _fma(i00, w00, i01 * w01)))
        r = i00 * w00
        r += i01 * w01
        r += i10 * w10
        r += i11 * w11
        return r
    raise ValueError(f"unknown recipe kind {recipe.kind!r}")


_CALIBRATED: dict[str, dict[str, Recipe | None]] = {}
_CALIBRATION_LOCK = threading.Lock()


def _probe_sizes() -> dict[str, list[tuple[int, int]]]:
    rng = np.random.default_rng(12345)
    small = [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 5),
        (7, 29),
        (29, 7),
        (30, 30),
        (31, 30),
        (30, 31),
        (28, 28),
        (33, 47),
        (60, 68),
        (64, 64),
        (100, 28),
        (127, 1),
        (1, 127),
        (13, 115),
    ]
    small += [
        (int(h), int(rng.integers(1, SMALL_SUM - h + 1))) for h in rng.integers(1, SMALL_SUM, 12)
    ]
    large = [
        (64, 65),
        (65, 64),
        (1, 128),
        (128, 1),
        (100, 100),
        (129, 30),
        (31, 400),
        (400, 31),
        (300, 200),
        (1, 700),
        (700, 2),
        (257, 513),
    ]
    large += [(int(h), int(w)) for h, w in rng.integers(30, 600, (8, 2))]
    return {"small": small, "large": large}


def _probe_masks(n: int, size: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(777)
    m = torch.rand(n, size, size, generator=g)
    noise = torch.randn(n, 1, 5, 5, generator=g) * 4
    smooth = torch.sigmoid(
        F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    )
    m[1::2] = smooth[1::2]
    m[2::5] = (m[2::5] > 0.5).float()
    return F.pad(m, (1, 1, 1, 1)).to(device)


def _recipe_exact(recipe: Recipe, padded: Tensor, sizes: list[tuple[int, int]]) -> bool:
    s = padded.shape[-1]
    for j, (h, w) in enumerate(sizes):
        m = padded[j : j + 1]
        ref = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        one = np.zeros(1, np.int64)
        cols = axis_tables(s, one + w, one, one + w, w, recipe.src_fma)
        rows = axis_tables(s, one + h, one, one + h, h, recipe.src_fma)
        ct = tuple(torch.from_numpy(t).to(padded.device) for t in cols)
        rt = tuple(torch.from_numpy(t).to(padded.device) for t in rows)
        v = _emulate(m, ct, rt, recipe)[0].t()
        if not torch.equal(v, ref):
            return False
    return True


def recipes_for(device: torch.device | str, mask_size: int = 28) -> dict[str, Recipe | None]:
    """The recipe that reproduces ``F.interpolate`` on ``device`` for small (``h + w <= 128``)
    and large outputs, found once per device and padded size by probing; ``None`` = no recipe
    matched (that regime then calls ``F.interpolate`` per box). The first vectorised paste on a
    device calls it (tens to hundreds of milliseconds); a server calls it at warm-up."""
    device = torch.device(device)
    key = f"{device}/{mask_size}"
    with _CALIBRATION_LOCK:
        found = _CALIBRATED.get(key)
        if found is not None:
            return found
        sizes = _probe_sizes()
        padded = _probe_masks(max(len(v) for v in sizes.values()), mask_size, device)
        found = {}
        for regime, probe in sizes.items():
            found[regime] = next((r for r in CANDIDATES if _recipe_exact(r, padded, probe)), None)
        _CALIBRATED[key] = found
        return found


def paste_strategy(device: torch.device) -> str:
    """``interpolate`` (per box, ATen's own kernel) on the CPU, where it is the faster of the two;
    ``vectorized`` (all boxes in a few batched operations) elsewhere, where kernel launches per box
    would dominate."""
    return "interpolate" if device.type == "cpu" else "vectorized"


# ---------------------------------------------------------------------------------------------
# Paste + transitions on the device.
# ---------------------------------------------------------------------------------------------

# Padded-volume cost (in pixels) of one more bucket, and the largest bucket (memory bound).
_BUCKET_OVERHEAD = {"cpu": 1 << 15, "cuda": 1 << 22}
_MAX_BUCKET_VOLUME = 1 << 24


def _plan_buckets(ww: np.ndarray, hr: np.ndarray, overhead: int) -> list[np.ndarray]:
    """Group windows ``ww x hr`` so that padding every group to its largest window wastes little."""
    order = np.argsort(-(ww * hr), kind="stable")
    buckets: list[list[int]] = []
    cur: list[int] = []
    wm = hm = vol = 0
    for i in order.tolist():
        w, h = int(ww[i]), int(hr[i])
        if cur:
            nw, nh = max(wm, w), max(hm, h)
            new_vol = (len(cur) + 1) * nw * nh
            if new_vol - vol - w * h <= overhead and new_vol <= _MAX_BUCKET_VOLUME:
                cur.append(i)
                wm, hm, vol = nw, nh, new_vol
                continue
            buckets.append(cur)
        cur, wm, hm, vol = [i], w, h, w * h
    if cur:
        buckets.append(cur)
    return [np.asarray(b, dtype=np.int64) for b in buckets]


def _column_boundaries(b: Tensor, d: Tensor) -> None:
    """Column-major run boundaries of windows ``b [n, Wc, Hr]`` whose last row is all zero:
    ``d[..., y] = b[..., y] != b[..., y - 1]`` with ``b[..., -1] = 0``."""
    d[:, :, 0] = b[:, :, 0]
    torch.ne(b[:, :, 1:], b[:, :, :-1], out=d[:, :, 1:])


def _row_major_boundaries(b: Tensor, d: Tensor) -> None:
    """The same for one row-major window ``b [h, w]`` into ``d [h + 1, w]`` (rows ``-1`` and
    ``h`` taken as zero): the vertical differences of the row-major window, computed with
    contiguous reads, are the column-major run boundaries."""
    h = b.shape[0]
    d[0] = b[0]
    torch.ne(b[1:], b[:-1], out=d[1:h])
    d[h] = b[h - 1]


_KEY_SHIFT = 40  # sort key = mask id << 40 | linear index (images below 2^40 pixels)


def mask_transitions(
    masks: Tensor, geom: PasteGeometry, *, strategy: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``masks [N, M, M]`` (probabilities, any float dtype, any device) by ``geom`` and
    threshold ``> 0.5``; returns the host int64 arrays ``(transitions, mask_ids)``: column-major
    linear indices in each mask's image where its value changes (see :mod:`maskrt.server.rle`),
    sorted by mask, then index.

    ``strategy``: ``vectorized`` evaluates all windows in a few batched operations (padded
    buckets of similar windows, column-major); ``interpolate`` runs ``F.interpolate`` per box
    (row-major); ``auto`` picks :func:`paste_strategy`. Either way every boundary of every mask
    lands in one boolean buffer on the device and one ``nonzero`` copies them to the host.
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    device = masks.device
    if strategy == "auto":
        strategy = paste_strategy(device)
    m_size = masks.shape[-1]
    s = m_size + 2
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    live = np.flatnonzero((geom.ww > 0) & (geom.wh > 0))
    if len(live) == 0:
        return empty

    # Plans: (recipe, members, Wc, Hr) for a padded column-major bucket, or
    # (None, [i], ww, wh + 1) for one row-major window [wh + 1, ww] pasted by F.interpolate.
    plans: list[tuple[Recipe | None, np.ndarray, int, int]] = []
    per_box = live
    if strategy == "vectorized":
        recipes = recipes_for(device, m_size)
        small = ((geom.bh + geom.bw) <= SMALL_SUM)[live]
        has_recipe = np.where(small, recipes["small"] is not None, recipes["large"] is not None)
        per_box = live[~has_recipe]
        overhead = _BUCKET_OVERHEAD.get(device.type, _BUCKET_OVERHEAD["cuda"])
        for name, in_regime in (("small", small), ("large", ~small)):
            members = live[has_recipe & in_regime]
            if len(members) == 0:
                continue
            hr = geom.wh[members] + 1  # one zero row past each column closes its last run
            for bucket in _plan_buckets(geom.ww[members], hr, overhead):
                idx = members[bucket]
                plans.append((recipes[name], idx, int(geom.ww[idx].max()), int(hr[bucket].max())))
    for i in per_box.tolist():
        plans.append((None, np.array([i], dtype=np.int64), int(geom.ww[i]), int(geom.wh[i]) + 1))

    vols = np.array([len(idx) * wc * hr for _, idx, wc, hr in plans], dtype=np.int64)
    offsets = np.zeros(len(plans) + 1, dtype=np.int64)
    np.cumsum(vols, out=offsets[1:])
    d_all = torch.empty(int(offsets[-1]), dtype=torch.bool, device=device)
    padded_masks = F.pad(masks.to(torch.float32), (1, 1, 1, 1))  # [N, s, s]

    # One host->device copy of the tables of every vectorised bucket.
    ints: list[np.ndarray] = []
    floats: list[np.ndarray] = []
    for recipe, idx, wc, hr in plans:
        if recipe is None:
            continue
        # Columns past a window's width and rows from its height on are padding, weight 0.
        cols = axis_tables(
            s, geom.bw[idx], geom.wx0[idx] - geom.bx0[idx], geom.ww[idx], wc, recipe.src_fma
        )
        rows = axis_tables(
            s, geom.bh[idx], geom.wy0[idx] - geom.by0[idx], geom.wh[idx], hr, recipe.src_fma
        )
        ints += [idx, cols[0], cols[1], rows[0], rows[1]]
        floats += [cols[2], cols[3], rows[2], rows[3]]
    if ints:
        int_dev = torch.from_numpy(np.concatenate([a.ravel() for a in ints])).to(device)
        flt_dev = torch.from_numpy(np.concatenate([a.ravel() for a in floats])).to(device)
    io = fo = 0
    scratch: Tensor | None = None
    for (recipe, idx, wc, hr), off in zip(plans, offsets[:-1].tolist()):
        n = len(idx)
        if recipe is None:
            i = int(idx[0])
            oy, ox, wh = int(geom.wy0[i] - geom.by0[i]), int(geom.wx0[i] - geom.bx0[i]), hr - 1
            full = F.interpolate(
                padded_masks[i][None, None],
                size=(int(geom.bh[i]), int(geom.bw[i])),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            if scratch is None or scratch.numel() < wh * wc:
                scratch = torch.empty(
                    int((geom.ww * geom.wh).max()), dtype=torch.bool, device=device
                )
            b = torch.gt(full[oy : oy + wh, ox : ox + wc], 0.5, out=scratch[: wh * wc].view(wh, wc))
            _row_major_boundaries(b, d_all[off : off + hr * wc].view(hr, wc))
            continue

        def take(src: Tensor, pos: int, count: int, width: int) -> tuple[Tensor, Tensor]:
            return (
                src[pos : pos + count * width].view(count, width),
                src[pos + count * width : pos + 2 * count * width].view(count, width),
            )

        sel = int_dev[io : io + n]
        x0, x1 = take(int_dev, io + n, n, wc)
        y0, y1 = take(int_dev, io + n + 2 * n * wc, n, hr)
        io += n + 2 * n * wc + 2 * n * hr
        b0, b1 = take(flt_dev, fo, n, wc)
        a0, a1 = take(flt_dev, fo + 2 * n * wc, n, hr)
        fo += 2 * n * wc + 2 * n * hr
        b = (
            _emulate(padded_masks.index_select(0, sel), (x0, x1, b0, b1), (y0, y1, a0, a1), recipe)
            > 0.5
        )
        _column_boundaries(b, d_all[off : off + n * wc * hr].view(n, wc, hr))

    if device.type == "cpu":
        flat = np.flatnonzero(d_all.numpy())  # numpy's bool scan is ~4x torch.nonzero's
    else:
        flat = torch.nonzero(d_all).view(-1).cpu().numpy()
    if len(flat) == 0:
        return empty
    # Flat position -> plan -> (member, column, row) -> linear index in the member's image.
    plan = np.searchsorted(offsets, flat, side="right") - 1
    r = flat - offsets[plan]
    wcs = np.array([p[2] for p in plans], dtype=np.int64)[plan]
    hrs = np.array([p[3] for p in plans], dtype=np.int64)[plan]
    column_major = np.array([p[0] is not None for p in plans])[plan]
    k, rem = np.divmod(r, wcs * hrs)
    x = np.where(column_major, rem // hrs, rem % wcs)
    y = np.where(column_major, rem % hrs, rem // wcs)
    member_off = np.zeros(len(plans) + 1, dtype=np.int64)
    np.cumsum([len(p[1]) for p in plans], out=member_off[1:])
    ids = np.concatenate([p[1] for p in plans])[member_off[plan] + k]
    lin = (geom.wx0[ids] + x) * geom.img_h[ids] + geom.wy0[ids] + y
    key = np.sort((ids << _KEY_SHIFT) | lin)
    return key & ((1 << _KEY_SHIFT) - 1), key >> _KEY_SHIFT


def paste_masks_binary(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], *, strategy: str = "auto"
) -> Tensor:
    """Full ``[N, H, W]`` bool masks (host); for tests and debugging only, the server never
    builds them. Equals ``paste_masks_in_image(masks[:, None], boxes, image_size)[:, 0] > 0.5``
    for boxes that touch the image."""
    h, w = image_size
    geom = paste_geometry(boxes.detach().cpu().numpy(), np.int64(h), np.int64(w), masks.shape[-1])
    lin, ids = mask_transitions(masks, geom, strategy=strategy)
    out = np.zeros((len(geom), h * w), dtype=np.int8)
    order = np.lexsort((lin, ids))
    lin, ids = lin[order], ids[order]
    # Alternate +1/-1 at each mask's transitions, then a running sum gives the mask.
    sign = np.ones(len(lin), dtype=np.int8)
    first = np.r_[True, ids[1:] != ids[:-1]]
    rank = np.arange(len(lin)) - np.maximum.accumulate(np.where(first, np.arange(len(lin)), 0))
    sign[rank % 2 == 1] = -1
    inside = lin < h * w
    np.add.at(out, (ids[inside], lin[inside]), sign[inside])
    full = np.cumsum(out, axis=1, dtype=np.int32) > 0
    return torch.from_numpy(full.reshape(len(geom), w, h).transpose(0, 2, 1).copy())


# ---------------------------------------------------------------------------------------------
# The API the server and the evaluation call.
# ---------------------------------------------------------------------------------------------


def _per_image(value: Any, count: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name}: {len(value)} values for {count} images")
        return list(value)
    return [value] * count


def postprocess_batch(
    outputs: DeployOutputs,
    letterboxes: Sequence[Letterbox],
    *,
    score_threshold: float | Sequence[float] = 0.0,
    max_detections: int | Sequence[int | None] | None = None,
    want_masks: bool | Sequence[bool] = True,
    labels: Sequence[str] | None = None,
    strategy: str = "auto",
) -> list[list[dict]]:
    """Detections of a batch from the deploy graph's outputs (``num_detections [B]``, ``boxes
    [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]``, ``masks [B, K, M, M]`` or ``None``; any
    device) and each image's :class:`Letterbox`.

    Per image (a scalar applies to all): keep rows ``< num_detections`` with
    ``score >= score_threshold``, the first ``max_detections`` of them (``None``: all), in the
    graph's order (descending score). Each record is ``{"box": [x1, y1, x2, y2]`` (original
    pixels), ``"score"``, ``"class_id"``, ``"label"`` (only with ``labels``, indexed by class
    id), ``"mask": {"size": [h, w], "counts": str}`` (only where masks are wanted)``}``.

    One device->host copy brings the small tensors; the masks are pasted on their device; one
    copy brings back the run boundaries of all masks of the batch.
    """
    num_detections, boxes, scores, classes, masks = (
        outputs.num_detections,
        outputs.boxes,
        outputs.scores,
        outputs.classes,
        outputs.masks,
    )
    bsz = len(letterboxes)
    k = boxes.shape[1]
    thresholds = _per_image(score_threshold, bsz, "score_threshold")
    limits = _per_image(max_detections, bsz, "max_detections")
    wants = _per_image(want_masks, bsz, "want_masks")
    small = (
        torch.cat(
            [
                boxes.reshape(bsz, k * 4).to(torch.float32),
                scores.reshape(bsz, k).to(torch.float32),
                classes.reshape(bsz, k).to(torch.int32).view(torch.float32),
                num_detections.reshape(bsz, 1).to(torch.int32).view(torch.float32),
            ],
            dim=1,
        )
        .cpu()
        .numpy()
    )
    host_boxes = small[:, : 4 * k].reshape(bsz, k, 4)
    host_scores = small[:, 4 * k : 5 * k]
    host_classes = small[:, 5 * k : 6 * k].view(np.int32)
    host_num = small[:, 6 * k].view(np.int32)

    records: list[list[dict]] = []
    wanted: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image, rows kept, original boxes)
    for b, lb in enumerate(letterboxes):
        n = int(min(max(int(host_num[b]), 0), k))
        keep = np.flatnonzero(host_scores[b, :n].astype(np.float64) >= float(thresholds[b]))
        if limits[b] is not None:
            keep = keep[: max(int(limits[b]), 0)]
        orig = boxes_to_original(torch.from_numpy(host_boxes[b, keep]), lb).numpy()
        recs = []
        for box, score, cls in zip(
            orig.tolist(), host_scores[b, keep].tolist(), host_classes[b, keep].tolist()
        ):
            rec = {"box": box, "score": score, "class_id": cls}
            if labels is not None:
                rec["label"] = labels[cls] if 0 <= cls < len(labels) else str(cls)
            recs.append(rec)
        records.append(recs)
        if wants[b] and masks is not None and len(keep):
            wanted.append((b, keep, orig))

    if wanted:
        counts = [len(keep) for _, keep, _ in wanted]
        img_h = np.repeat([letterboxes[b].height for b, _, _ in wanted], counts).astype(np.int64)
        img_w = np.repeat([letterboxes[b].width for b, _, _ in wanted], counts).astype(np.int64)
        m_size = masks.shape[-1]
        geom = paste_geometry(np.concatenate([o for _, _, o in wanted]), img_h, img_w, m_size)
        rows = np.concatenate([b * k + keep for b, keep, _ in wanted])
        flat_masks = masks.reshape(-1, masks.shape[-2], m_size)
        chosen = flat_masks.index_select(0, torch.from_numpy(rows).to(flat_masks.device))
        lin, ids = mask_transitions(chosen, geom, strategy=strategy)
        rles = iter(rle_from_transitions(lin, ids, np.stack([img_h, img_w], axis=1)))
        for b, _, _ in wanted:
            for rec in records[b]:
                rec["mask"] = next(rles)
    return records


def postprocess_image(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    masks: Tensor | None,
    num_detections: int | Tensor,
    letterbox: Letterbox,
    *,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
    want_masks: bool = True,
    labels: Sequence[str] | None = None,
    strategy: str = "auto",
) -> list[dict]:
    """One image's slice of the outputs (``[K, 4]``, ``[K]``, ``[K]``, ``[K, M, M]``); see
    :func:`postprocess_batch`."""
    num = torch.as_tensor(num_detections, dtype=torch.int32, device=boxes.device).reshape(1)
    outputs = DeployOutputs(
        num, boxes[None], scores[None], classes[None], None if masks is None else masks[None]
    )
    return postprocess_batch(
        outputs,
        [letterbox],
        score_threshold=score_threshold,
        max_detections=max_detections,
        want_masks=want_masks,
        labels=labels,
        strategy=strategy,
    )[0]
