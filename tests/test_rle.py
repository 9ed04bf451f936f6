"""COCO RLE (maskrt.runtime.rle) against pycocotools, the reference, byte for byte."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest

from maskrt.runtime.rle import (
    Rle,
    counts_to_strings,
    rle_from_transitions,
    transitions_to_counts,
)


def full_mask_transitions(mask: np.ndarray) -> np.ndarray:
    """Column-major transitions of one whole ``h x w`` binary mask (any numpy layout); the
    server never holds a whole mask, it finds them from the box window on the device."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    edges = np.empty(len(flat) + 1, dtype=bool)
    edges[0] = flat[0] if len(flat) else False
    np.not_equal(flat[1:], flat[:-1], out=edges[1:-1])
    edges[-1] = flat[-1] if len(flat) else False
    return np.flatnonzero(edges)


def encode(mask: np.ndarray) -> Rle:
    """Our COCO RLE of one whole binary mask."""
    h, w = mask.shape
    t = full_mask_transitions(mask)
    return rle_from_transitions(t, np.zeros(len(t), dtype=np.int64), np.array([[h, w]]))[0]


def coco(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_string_reference(counts: list[int]) -> str:
    """A line-by-line transcription of ``rleToString`` (pycocotools maskApi.c), for counts too
    large to build a mask for."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def random_masks(rng: np.random.Generator, count: int):
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        kind = i % 8
        if kind == 0:
            m = rng.random((h, w)) < rng.random()
        elif kind == 1:
            m = np.zeros((h, w), bool)
        elif kind == 2:
            m = np.ones((h, w), bool)
        elif kind == 3:  # a rectangle, possibly touching any border
            m = np.zeros((h, w), bool)
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : rng.integers(y0, h + 1), x0 : rng.integers(x0, w + 1)] = True
        elif kind == 4:  # full-height columns: runs continue across columns
            m = np.zeros((h, w), bool)
            m[:, rng.integers(0, w) : rng.integers(0, w + 1)] = True
        elif kind == 5:  # first and last pixel
            m = np.zeros((h, w), bool)
            m[0, 0] = m[-1, -1] = True
        elif kind == 6:  # checkerboard: runs of one
            m = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
        else:  # a blob
            yy, xx = np.mgrid[:h, :w]
            r2 = (yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2
            m = r2 < rng.uniform(1, 30) ** 2
        yield m


def test_encode_matches_pycocotools_on_many_masks() -> None:
    rng = np.random.default_rng(0)
    for m in random_masks(rng, 4000):
        assert encode(m) == coco(m), m.shape


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (2, 2)])
def test_encode_degenerate_shapes(shape) -> None:
    for value in (0, 1):
        m = np.full(shape, value, dtype=bool)
        assert encode(m) == coco(m)
    m = np.zeros(shape, bool)
    m.flat[-1] = True
    assert encode(m) == coco(m)


def test_encode_any_layout_and_dtype() -> None:
    rng = np.random.default_rng(1)
    m = rng.random((31, 17)) < 0.4
    for variant in (m, np.asfortranarray(m), m.astype(np.uint8), m.T.copy().T, m * 255):
        assert encode(variant) == coco(m)


def test_batched_encoding_equals_one_by_one() -> None:
    rng = np.random.default_rng(2)
    masks = list(random_masks(rng, 200))
    lin, ids = [], []
    for j, m in enumerate(masks):
        t = full_mask_transitions(m)
        lin.append(t)
        ids.append(np.full(len(t), j))
    # Groups in scrambled order: transitions_to_counts sorts the groups back.
    order = rng.permutation(len(masks))
    lin = np.concatenate([lin[j] for j in order])
    ids = np.concatenate([ids[j] for j in order])
    sizes = np.array([m.shape for m in masks])
    assert rle_from_transitions(lin, ids, sizes) == [coco(m) for m in masks]


def test_seam_transitions_cancel() -> None:
    # A window spanning the whole height reports an end at x*h + h and a start at (x+1)*h.
    h, w = 4, 3
    m = np.zeros((h, w), bool)
    m[:, 1:] = True
    lin = np.array([1 * h, 2 * h, 2 * h, 3 * h])  # col 1 rows 0..3, col 2 rows 0..3
    assert rle_from_transitions(lin, np.zeros(4, np.int64), np.array([[h, w]]))[0] == coco(m)


def test_counts_large_values_and_negative_deltas() -> None:
    rng = np.random.default_rng(3)
    cases = [
        [0],
        [7],
        [2**32 - 1],
        [0, 2**32 - 1],
        [5, 2**31, 3, 2**31 + 7, 1, 2**32 - 2**31 - 11],
        [1, 1, 1000000, 1, 1, 3000000000],
    ]
    for _ in range(300):
        n = int(rng.integers(1, 12))
        scale = 2 ** int(rng.integers(1, 33))
        cases.append([int(v) for v in rng.integers(0, scale, n)])
    lengths = np.array([len(c) for c in cases])
    strings = counts_to_strings(np.concatenate([np.array(c, np.int64) for c in cases]), lengths)
    assert strings == [rle_to_string_reference(c) for c in cases]


def test_large_counts_parse_back_in_pycocotools() -> None:
    # 70000 x 70000 image (4.9e9 > 2^32 pixels is beyond COCO; stay below): 60000 x 60000.
    h = w = 60000
    lin = np.array([5, 17, 59000 * h + 3, 59000 * h + 40000, h * w - 2, h * w])
    rle = rle_from_transitions(lin, np.zeros(len(lin), np.int64), np.array([[h, w]]))[0]
    coco_rle = {"size": rle["size"], "counts": rle["counts"].encode()}
    assert int(mask_util.area(coco_rle)) == 12 + 40000 - 3 + 2


def test_transitions_to_counts_shapes() -> None:
    counts, lengths = transitions_to_counts(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([12, 5])
    )
    assert counts.tolist() == [12, 5] and lengths.tolist() == [1, 1]
    counts, lengths = transitions_to_counts(np.array([0, 12]), np.array([0, 0]), np.array([12]))
    assert counts.tolist() == [0, 12] and lengths.tolist() == [2]
    assert counts_to_strings(np.zeros(0, np.int64), np.zeros(0, np.int64)) == []
