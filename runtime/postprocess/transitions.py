"""Paste thresholded masks on their device and find their run boundaries ("transitions").

:func:`paste_transitions` pastes ``M x M`` mask probabilities into their windows (the boxes
clipped to the image), thresholds them ``> 0.5`` and returns the column-major linear indices where
each mask's value changes, which :func:`maskrt.runtime.rle.rle_from_transitions` turns into COCO RLE.
Every boundary of every mask of a batch lands in one boolean buffer on the device, and one
``nonzero`` copies them to the host. Steps: plan (which windows are evaluated together, and how),
one upload of the bilinear tables, the paste of each plan into its slice of the buffer, and the
mapping of the buffer's set positions back to (mask, linear index).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskrt.runtime.postprocess.geometry import PasteGeometry, axis_tables
from maskrt.runtime.postprocess.recipes import SMALL_SUM, Recipe, bilinear_windows, recipes_for

STRATEGIES = ("auto", "vectorized", "interpolate")
# Padded-volume cost (in pixels) of one more bucket, and the largest bucket (memory bound).
_BUCKET_OVERHEAD = {"cpu": 1 << 15, "cuda": 1 << 22}
MAX_BUCKET_VOLUME = 1 << 24
_KEY_SHIFT = 40  # sort key = mask id << 40 | linear index (images below 2^40 pixels)


class Plan(NamedTuple):
    """Windows pasted together: with a ``recipe``, a padded column-major bucket ``[n, wc, hr]``
    of the ``members``; without, one row-major window ``[hr, wc]`` pasted by ``F.interpolate``.
    ``hr`` is the window height plus one zero row, which closes each column's last run."""

    recipe: Recipe | None
    members: np.ndarray  # int64 mask indices
    wc: int
    hr: int

    @property
    def volume(self) -> int:
        return len(self.members) * self.wc * self.hr


def paste_strategy(device: torch.device) -> str:
    """``interpolate`` (per box, ATen's own kernel) on the CPU, where it is the faster of the two;
    ``vectorized`` (all boxes in a few batched operations) elsewhere, where kernel launches per box
    would dominate."""
    return "interpolate" if device.type == "cpu" else "vectorized"


def paste_transitions(
    masks: Tensor, geom: PasteGeometry, *, strategy: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``masks [N, M, M]`` (probabilities, any float dtype, any device) by ``geom`` and
    threshold ``> 0.5``; returns the host int64 arrays ``(transitions, mask_ids)``: column-major
    linear indices in each mask's image where its value changes (see :mod:`maskrt.runtime.rle`),
    sorted by mask, then index.

    ``strategy``: ``vectorized`` evaluates all windows in a few batched operations (padded
    buckets of similar windows, column-major); ``interpolate`` runs ``F.interpolate`` per box
    (row-major); ``auto`` picks :func:`paste_strategy`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    device = masks.device
    if strategy == "auto":
        strategy = paste_strategy(device)
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    live = np.flatnonzero((geom.ww > 0) & (geom.wh > 0))
    if len(live) == 0:
        return empty
    plans = plan_pastes(geom, live, masks.shape[-1], device, vectorized=strategy == "vectorized")
    offsets = np.zeros(len(plans) + 1, dtype=np.int64)
    np.cumsum([p.volume for p in plans], out=offsets[1:])
    boundaries = torch.empty(int(offsets[-1]), dtype=torch.bool, device=device)
    padded = F.pad(masks.to(torch.float32), (1, 1, 1, 1))  # [N, M + 2, M + 2]
    tables = _device_tables(plans, geom, padded.shape[-1], device)
    scratch = _Scratch(geom, device)
    for plan, off in zip(plans, offsets[:-1].tolist()):
        out = boundaries[off : off + plan.volume]
        if plan.recipe is None:
            _paste_one(padded, geom, plan, scratch, out)
        else:
            _paste_bucket(padded, plan, next(tables), out)
    if device.type == "cpu":
        flat = np.flatnonzero(boundaries.numpy())  # numpy's bool scan is ~4x torch.nonzero's
    else:
        flat = torch.nonzero(boundaries).view(-1).cpu().numpy()
    if len(flat) == 0:
        return empty
    return _linear_indices(flat, plans, offsets, geom)


# -- plan ---------------------------------------------------------------------------------------


def plan_pastes(
    geom: PasteGeometry, live: np.ndarray, mask_size: int, device: torch.device, vectorized: bool
) -> list[Plan]:
    """Buckets of windows for every regime with a recipe (``vectorized``), one plan per box for
    the rest."""
    plans: list[Plan] = []
    per_box = live
    if vectorized:
        recipes = recipes_for(device, mask_size)
        small = ((geom.bh + geom.bw) <= SMALL_SUM)[live]
        has_recipe = np.where(small, recipes["small"] is not None, recipes["large"] is not None)
        per_box = live[~has_recipe]
        overhead = _BUCKET_OVERHEAD.get(device.type, _BUCKET_OVERHEAD["cuda"])
        for name, in_regime in (("small", small), ("large", ~small)):
            members = live[has_recipe & in_regime]
            if len(members) == 0:
                continue
            hr = geom.wh[members] + 1
            for bucket in plan_buckets(geom.ww[members], hr, overhead):
                idx = members[bucket]
                plans.append(
                    Plan(recipes[name], idx, int(geom.ww[idx].max()), int(hr[bucket].max()))
                )
    for i in per_box.tolist():
        plans.append(
            Plan(None, np.array([i], dtype=np.int64), int(geom.ww[i]), int(geom.wh[i]) + 1)
        )
    return plans


def plan_buckets(ww: np.ndarray, hr: np.ndarray, overhead: int) -> list[np.ndarray]:
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
            if new_vol - vol - w * h <= overhead and new_vol <= MAX_BUCKET_VOLUME:
                cur.append(i)
                wm, hm, vol = nw, nh, new_vol
                continue
            buckets.append(cur)
        cur, wm, hm, vol = [i], w, h, w * h
    if cur:
        buckets.append(cur)
    return [np.asarray(b, dtype=np.int64) for b in buckets]


# -- tables -------------------------------------------------------------------------------------

BucketTables = tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]


def _device_tables(
    plans: list[Plan], geom: PasteGeometry, side: int, device: torch.device
) -> Iterator[BucketTables]:
    """``(members, (x0, x1, b0, b1), (y0, y1, a0, a1))`` on ``device`` for each bucket plan in
    order, all from one host->device copy of the integer and one of the float tables. Columns
    past a window's width and rows from its height on are padding, weight 0."""
    ints: list[np.ndarray] = []
    floats: list[np.ndarray] = []
    buckets = [p for p in plans if p.recipe is not None]
    for recipe, idx, wc, hr in buckets:
        assert recipe is not None
        cols = axis_tables(
            side, geom.bw[idx], geom.wx0[idx] - geom.bx0[idx], geom.ww[idx], wc, recipe.src_fma
        )
        rows = axis_tables(
            side, geom.bh[idx], geom.wy0[idx] - geom.by0[idx], geom.wh[idx], hr, recipe.src_fma
        )
        ints += [idx, cols[0], cols[1], rows[0], rows[1]]
        floats += [cols[2], cols[3], rows[2], rows[3]]
    if not buckets:
        return
    int_dev = torch.from_numpy(np.concatenate([a.ravel() for a in ints])).to(device)
    flt_dev = torch.from_numpy(np.concatenate([a.ravel() for a in floats])).to(device)

    def pair(src: Tensor, pos: int, count: int, width: int) -> tuple[Tensor, Tensor]:
        return (
            src[pos : pos + count * width].view(count, width),
            src[pos + count * width : pos + 2 * count * width].view(count, width),
        )

    io = fo = 0
    for _, idx, wc, hr in buckets:
        n = len(idx)
        sel = int_dev[io : io + n]
        x0, x1 = pair(int_dev, io + n, n, wc)
        y0, y1 = pair(int_dev, io + n + 2 * n * wc, n, hr)
        io += n + 2 * n * wc + 2 * n * hr
        b0, b1 = pair(flt_dev, fo, n, wc)
        a0, a1 = pair(flt_dev, fo + 2 * n * wc, n, hr)
        fo += 2 * n * wc + 2 * n * hr
        yield sel, (x0, x1, b0, b1), (y0, y1, a0, a1)


# -- paste --------------------------------------------------------------------------------------


def _paste_bucket(padded: Tensor, plan: Plan, tables: BucketTables, out: Tensor) -> None:
    """Boundaries of a bucket's windows, evaluated by its recipe, into ``out``."""
    assert plan.recipe is not None
    sel, cols, rows = tables
    b = bilinear_windows(padded.index_select(0, sel), cols, rows, plan.recipe) > 0.5
    column_boundaries(b, out.view(len(plan.members), plan.wc, plan.hr))


class _Scratch:
    """One boolean buffer, as large as the largest window, reused by every per-box paste."""

    def __init__(self, geom: PasteGeometry, device: torch.device) -> None:
        self.geom, self.device = geom, device
        self.buffer: Tensor | None = None

    def view(self, h: int, w: int) -> Tensor:
        if self.buffer is None or self.buffer.numel() < h * w:
            size = int((self.geom.ww * self.geom.wh).max())
            self.buffer = torch.empty(size, dtype=torch.bool, device=self.device)
        return self.buffer[: h * w].view(h, w)


def _paste_one(
    padded: Tensor, geom: PasteGeometry, plan: Plan, scratch: _Scratch, out: Tensor
) -> None:
    """Boundaries of one window, pasted by ``F.interpolate`` itself (row-major), into ``out``."""
    i = int(plan.members[0])
    oy, ox, wh = int(geom.wy0[i] - geom.by0[i]), int(geom.wx0[i] - geom.bx0[i]), plan.hr - 1
    full = F.interpolate(
        padded[i][None, None],
        size=(int(geom.bh[i]), int(geom.bw[i])),
        mode="bilinear",
        align_corners=False,
    )[0, 0]
    b = torch.gt(full[oy : oy + wh, ox : ox + plan.wc], 0.5, out=scratch.view(wh, plan.wc))
    row_major_boundaries(b, out.view(plan.hr, plan.wc))


def column_boundaries(b: Tensor, d: Tensor) -> None:
    """Column-major run boundaries of windows ``b [n, Wc, Hr]`` whose last row is all zero:
    ``d[..., y] = b[..., y] != b[..., y - 1]`` with ``b[..., -1] = 0``."""
    d[:, :, 0] = b[:, :, 0]
    torch.ne(b[:, :, 1:], b[:, :, :-1], out=d[:, :, 1:])


def row_major_boundaries(b: Tensor, d: Tensor) -> None:
    """The same for one row-major window ``b [h, w]`` into ``d [h + 1, w]`` (rows ``-1`` and
    ``h`` taken as zero): the vertical differences of the row-major window, computed with
    contiguous reads, are the column-major run boundaries."""
    h = b.shape[0]
    d[0] = b[0]
    torch.ne(b[1:], b[:-1], out=d[1:h])
    d[h] = b[h - 1]


# -- back to images -----------------------------------------------------------------------------


def _linear_indices(
    flat: np.ndarray, plans: list[Plan], offsets: np.ndarray, geom: PasteGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Set positions of the boundary buffer -> (linear index in the mask's image, mask id),
    sorted by mask, then index."""
    plan = np.searchsorted(offsets, flat, side="right") - 1
    r = flat - offsets[plan]
    wcs = np.array([p.wc for p in plans], dtype=np.int64)[plan]
    hrs = np.array([p.hr for p in plans], dtype=np.int64)[plan]
    column_major = np.array([p.recipe is not None for p in plans])[plan]
    k, rem = np.divmod(r, wcs * hrs)
    x = np.where(column_major, rem // hrs, rem % wcs)
    y = np.where(column_major, rem % hrs, rem // wcs)
    member_off = np.zeros(len(plans) + 1, dtype=np.int64)
    np.cumsum([len(p.members) for p in plans], out=member_off[1:])
    ids = np.concatenate([p.members for p in plans])[member_off[plan] + k]
    lin = (geom.wx0[ids] + x) * geom.img_h[ids] + geom.wy0[ids] + y
    key = np.sort((ids << _KEY_SHIFT) | lin)
    return key & ((1 << _KEY_SHIFT) - 1), key >> _KEY_SHIFT
