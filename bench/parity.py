"""Per-detection parity of two backends through the serving pipeline (``maskrt bench parity``).

Both backends run the same images through :class:`maskrt.runtime.pipeline.Pipeline` (letterbox,
deploy graph, post-processing, RLE), so what is compared is what the server would answer. Each
detection of ``--a`` is paired, in score order, with the unused detection of ``--b`` of the same class
whose box overlaps it most; a pair matches when box IoU >= 0.99 and mask IoU >= 0.98 (COCO RLE IoU
by pycocotools). Prints one JSON line::

    python -m maskrt.bench.parity --a onnxruntime --b torch --data shapes:100:2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

BOX_IOU_MIN = 0.99
MASK_IOU_MIN = 0.98


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    box_iou: float
    mask_iou: float


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    same = (a[:, None, :] == b[None, :, :]).all(-1)  # equal boxes of no area: IoU 1
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


def _rle(mask: dict) -> dict:
    counts = mask["counts"]
    return {
        "size": list(mask["size"]),
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def _mask_iou(a: dict, b: dict) -> float:
    """pycocotools' IoU, except that two empty masks (boxes under a pixel) are equal."""
    if not mask_utils.area(a) and not mask_utils.area(b):
        return 1.0
    return float(mask_utils.iou([a], [b], [0])[0, 0])


def pair_detections(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> list[Pair]:
    """Greedy one-to-one pairs of two detection lists of one image (the server's detection dicts:
    ``box``, ``score``, ``class_id``, ``mask``); every detection of ``a`` with a same-class partner
    left gets one."""
    if not a or not b:
        return []
    boxes_a = np.array([d["box"] for d in a], dtype=np.float64)
    boxes_b = np.array([d["box"] for d in b], dtype=np.float64)
    ious = _box_iou(boxes_a, boxes_b)
    same = np.array([[da["class_id"] == db["class_id"] for db in b] for da in a])
    ious = np.where(same, ious, -1.0)
    used: set[int] = set()
    pairs = []
    for i in sorted(range(len(a)), key=lambda i: -a[i]["score"]):
        for j in np.argsort(-ious[i], kind="stable"):
            if ious[i, j] <= 0:
                break
            if int(j) not in used:
                used.add(int(j))
                mask_iou = 1.0
                if "mask" in a[i] and "mask" in b[j]:
                    mask_iou = _mask_iou(_rle(a[i]["mask"]), _rle(b[j]["mask"]))
                pairs.append(Pair(i, int(j), float(ious[i, j]), mask_iou))
                break
    return pairs


@dataclass
class Parity:
    """Totals over images: detections on each side and pairs meeting both thresholds."""

    detections_a: int = 0
    detections_b: int = 0
    matched: int = 0
    worst_box_iou: float = 1.0
    worst_mask_iou: float = 1.0

    def add(self, a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> None:
        self.detections_a += len(a)
        self.detections_b += len(b)
        for pair in pair_detections(a, b):
            if pair.box_iou >= BOX_IOU_MIN and pair.mask_iou >= MASK_IOU_MIN:
                self.matched += 1
            self.worst_box_iou = min(self.worst_box_iou, pair.box_iou)
            self.worst_mask_iou = min(self.worst_mask_iou, pair.mask_iou)

    @property
    def matched_fraction(self) -> float:
        """Share of ``a``'s detections matched (1.0 when neither side detects anything)."""
        return (
            self.matched / self.detections_a if self.detections_a else float(self.detections_b == 0)
        )


def main(argv: list[str] | None = None) -> int:
    from maskrt.model.coco import open_dataset
    from maskrt.runtime.backends import open_backend
    from maskrt.runtime.options import RuntimeOptions
    from maskrt.runtime.pipeline import Pipeline

    parser = argparse.ArgumentParser(
        prog="maskrt bench parity", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--a", default="onnxruntime", help="backend whose detections are matched")
    parser.add_argument("--b", default="torch", help="reference backend")
    parser.add_argument("--model", help="checkpoint for both (default: the shipped shapes model)")
    parser.add_argument("--a-model", help="model file for --a (e.g. a tensorrt-target ONNX)")
    parser.add_argument("--b-model", help="model file for --b")
    parser.add_argument("--data", default="shapes:100:2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.0)
    args = parser.parse_args(argv)

    def pipeline(backend: str, model: str | None) -> Pipeline:
        return Pipeline(
            open_backend(
                RuntimeOptions(
                    model=model or args.model,
                    backend=backend,
                    device=args.device,
                    max_batch=args.batch_size,
                )
            )
        )

    data = open_dataset(args.data)
    a, b = pipeline(args.a, args.a_model), pipeline(args.b, args.b_model)
    parity = Parity()
    started = time.perf_counter()
    for start in range(0, len(data), args.batch_size):
        images = [data.load_image(i) for i in data.image_ids[start : start + args.batch_size]]
        opts = {"score_threshold": args.score_threshold}
        for dets_a, dets_b in zip(a.predict(images, **opts), b.predict(images, **opts)):
            parity.add(dets_a, dets_b)
    print(
        json.dumps(
            {
                "a": args.a,
                "b": args.b,
                "data": args.data,
                "images": len(data),
                "detections_a": parity.detections_a,
                "detections_b": parity.detections_b,
                "matched": parity.matched,
                "matched_fraction": round(parity.matched_fraction, 4),
                "box_iou_min": BOX_IOU_MIN,
                "mask_iou_min": MASK_IOU_MIN,
                "worst_pair_box_iou": round(parity.worst_box_iou, 4),
                "worst_pair_mask_iou": round(parity.worst_mask_iou, 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
