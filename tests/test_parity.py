"""The per-detection matcher behind ``maskrt bench parity`` (and the backend parity tests), on real
COCO RLEs from pycocotools."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from maskrt.bench.parity import Parity, pair_detections


def _det(box, class_id=1, score=0.9, size=(64, 64)) -> dict:
    m = np.zeros(size, dtype=np.uint8)
    x1, y1, x2, y2 = (round(v) for v in box)
    m[y1:y2, x1:x2] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {
        "box": list(map(float, box)),
        "score": score,
        "class_id": class_id,
        "mask": {"size": rle["size"], "counts": rle["counts"].decode()},
    }


def test_identical_detections_all_match():
    dets = [
        _det([2, 2, 30, 30], 1, 0.9),
        _det([10, 10, 50, 40], 2, 0.8),
        _det([5, 5, 5, 5], 1, 0.1),
    ]
    parity = Parity()
    parity.add(dets, list(reversed(dets)))
    assert (parity.detections_a, parity.matched, parity.matched_fraction) == (3, 3, 1.0)
    assert parity.worst_mask_iou == 1.0  # the empty masks of the zero-size box count as equal


def test_class_shift_and_missing_detections_do_not_match():
    a = [
        _det([2, 2, 30, 30], 1, 0.9),
        _det([10, 10, 50, 40], 2, 0.8),
        _det([40, 40, 60, 60], 3, 0.7),
    ]
    b = [
        _det([2, 2, 30, 30], 2, 0.9),  # other class: no partner for a[0]
        _det([10, 10, 50, 42], 2, 0.8),
    ]  # same class, box IoU 40*30/(40*32) = 0.9375 < 0.99
    pairs = pair_detections(a, b)
    assert [(p.a, p.b) for p in pairs] == [(1, 1)]
    assert abs(pairs[0].box_iou - 30 / 32) < 1e-9 and abs(pairs[0].mask_iou - 30 / 32) < 1e-9
    parity = Parity()
    parity.add(a, b)
    assert parity.matched == 0 and parity.matched_fraction == 0.0 and parity.detections_b == 2


def test_one_to_one_in_score_order():
    a = [_det([0, 0, 20, 20], 1, 0.5), _det([0, 0, 20, 20], 1, 0.9)]
    b = [_det([0, 0, 20, 20], 1, 0.9)]
    pairs = pair_detections(a, b)
    assert [(p.a, p.b) for p in pairs] == [(1, 0)]  # the higher score takes the only partner
    empty = Parity()
    empty.add([], [])
    assert empty.matched_fraction == 1.0
    empty.add([], b)
    assert empty.matched_fraction == 0.0
