"""COCO run-length encoding, vectorised with numpy, byte-identical to ``pycocotools.mask.encode``.

COCO RLE walks the ``h x w`` binary mask in column-major (Fortran) order. ``counts`` alternates
run lengths of 0s and 1s and always starts with a run of 0s (possibly of length 0); the last run
reaches the end of the image. The compressed string (``rleToString`` in pycocotools' maskApi.c)
stores each count ``x`` (for ``i > 2`` the difference ``counts[i] - counts[i - 2]``) as a signed
little-endian base-32 number: 5 bits per character, bit ``0x20`` set while more characters follow,
stop once the rest is the sign extension of bit ``0x10``, each character offset by 48 (``'0'``).

Nothing here loops over pixels in Python. Masks are described by their *transitions*: the sorted
column-major linear indices where the value changes (a run of 1s starting at ``s`` and ending
before ``e`` contributes ``s`` and ``e``). :mod:`maskrt.runtime.postprocess` finds them on the
device from the box window alone; zeros outside the window are folded in arithmetically here.
The only Python loop is one string slice per mask.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np


class Rle(TypedDict):
    """A COCO compressed RLE as the API answers it."""

    size: list[int]  # [height, width]
    counts: str


def counts_to_strings(counts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """COCO compressed strings of several RLEs whose counts are concatenated in ``counts``.

    ``lengths[j]`` counts of mask ``j`` follow each other in ``counts`` (int64).
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    ends = np.cumsum(lengths)
    starts = ends - lengths
    # x[i] = counts[i] - counts[i - 2] from the fourth count of each mask on.
    x = counts.copy()
    x[2:] -= counts[:-2]
    for o in range(3):
        first = starts[lengths > o] + o
        x[first] = counts[first]
    # Characters per value: the smallest g with -2^(5g-1) <= x < 2^(5g-1), i.e. with
    # mag = x (x >= 0) or ~x (x < 0), the smallest g with mag < 2^(5g-1).
    mag = x ^ (x >> 63)
    top = int(mag.max())
    nchar = np.ones(len(x), dtype=np.uint8)
    g = 1
    while top >= 1 << (5 * g - 1):
        nchar += mag >= 1 << (5 * g - 1)
        g += 1
    # Character k of a value: its 5-bit group k, 0x20 if more follow, plus 48.
    chars = np.empty((len(x), g), dtype=np.uint8)
    for k in range(g):
        col = ((x >> (5 * k)) & 0x1F).astype(np.uint8)
        if k + 1 < g:
            col |= (nchar > k + 1).view(np.uint8) << 5
        col += 48
        chars[:, k] = col
    if g > 1:
        chars = chars[np.arange(g, dtype=np.uint8) < nchar[:, None]]
    text = chars.tobytes().decode("ascii")
    bounds = np.concatenate(([0], np.cumsum(nchar, dtype=np.int64)[ends - 1])).tolist()
    return [text[bounds[j] : bounds[j + 1]] for j in range(n)]


def transitions_to_counts(
    transitions: np.ndarray, mask_ids: np.ndarray, areas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO counts of ``len(areas)`` masks from their transitions.

    ``transitions``: int64 column-major linear indices, grouped by ``mask_ids`` (each mask's
    entries contiguous and ascending; groups in any order). Two equal consecutive entries of
    one mask (a run ending exactly where the next begins, as at the seam between two columns of
    a window spanning the whole image height) cancel. ``areas[j]`` = ``h * w`` of mask ``j``.
    Returns ``(counts, lengths)``, masks in index order, as :func:`counts_to_strings` takes them.
    """
    transitions = np.asarray(transitions, dtype=np.int64)
    mask_ids = np.asarray(mask_ids, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.int64)
    n = len(areas)
    if len(transitions):
        # Put the groups in mask order; the sort is stable so each group stays ascending.
        if np.any(mask_ids[1:] < mask_ids[:-1]):
            order = np.argsort(mask_ids, kind="stable")
            transitions, mask_ids = transitions[order], mask_ids[order]
        same = (transitions[1:] == transitions[:-1]) & (mask_ids[1:] == mask_ids[:-1])
        if same.any():
            drop = np.zeros(len(transitions), dtype=bool)
            drop[:-1] |= same
            drop[1:] |= same
            transitions, mask_ids = transitions[~drop], mask_ids[~drop]
    per_mask = np.bincount(mask_ids, minlength=n).astype(np.int64)
    # One extra slot per mask for the image end: bounds = [t_1, ..., t_n, area].
    ext_len = per_mask + 1
    ext_start = np.zeros(n, dtype=np.int64)
    np.cumsum(ext_len[:-1], out=ext_start[1:])
    bounds = np.empty(int(ext_len.sum()), dtype=np.int64)
    last = ext_start + per_mask
    bounds[last] = areas
    if len(transitions):
        within = np.arange(len(transitions), dtype=np.int64) - np.repeat(
            np.cumsum(per_mask) - per_mask, per_mask
        )
        bounds[np.repeat(ext_start, per_mask) + within] = transitions
    prev = np.empty_like(bounds)
    prev[1:] = bounds[:-1]
    prev[ext_start] = 0
    counts = bounds - prev
    # A mask whose last pixel is set ends with a run of 1s: no trailing run of 0s.
    tail_zero = counts[last] == 0
    keep = np.ones(len(counts), dtype=bool)
    keep[last[tail_zero]] = False
    lengths = ext_len - tail_zero
    return counts[keep], lengths


def rle_from_transitions(
    transitions: np.ndarray, mask_ids: np.ndarray, sizes: np.ndarray
) -> list[Rle]:
    """``{"size": [h, w], "counts": str}`` for each mask; ``sizes`` is ``[n, 2]`` (h, w)."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    counts, lengths = transitions_to_counts(transitions, mask_ids, sizes[:, 0] * sizes[:, 1])
    strings = counts_to_strings(counts, lengths)
    return [{"size": [h, w], "counts": s} for (h, w), s in zip(sizes.tolist(), strings)]
