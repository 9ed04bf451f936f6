"""COCO evaluation (pycocotools ``COCOeval``) of a model on a COCO-format data set.

``eager`` runs torchvision's own forward (full-image mask pasting), the reference every deploy
backend is compared with; the deploy backends go through the serving pipeline, so what is
measured is what the server answers.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from maskrt.model.checkpoint import LoadedModel
from maskrt.model.coco import CocoInstances
from maskrt.progress import track

# A predictor maps a batch of uint8 HxWx3 images to, per image, (boxes xyxy [N,4], scores [N],
# class ids [N], COCO RLEs) in original-image pixels.
Predictions = list[tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[Mapping[str, Any]]]]
Predictor = Callable[[list[np.ndarray]], Predictions]


def eager_predictor(loaded: LoadedModel, device: torch.device) -> Predictor:
    """torchvision's eager ``MaskRCNN.forward`` with its own full-image mask pasting."""
    model = loaded.model.to(device).eval()

    @torch.inference_mode()
    def predict(images: list[np.ndarray]) -> Predictions:
        batch = [
            torch.from_numpy(im).to(device).permute(2, 0, 1).float().div_(255) for im in images
        ]
        results: Predictions = []
        for out in model(batch):
            masks = (out["masks"][:, 0] > 0.5).to(torch.uint8).cpu().numpy()
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
            results.append(
                (
                    out["boxes"].cpu().numpy(),
                    out["scores"].cpu().numpy(),
                    out["labels"].cpu().numpy(),
                    rles,
                )
            )
        return results

    return predict


def _batches(data: CocoInstances, batch_size: int) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    for start in range(0, len(data), batch_size):
        ids = data.image_ids[start : start + batch_size]
        yield ids, [data.load_image(i) for i in ids]


CONFIDENT = 0.5  # the server's default score threshold: what a user sees
RECALL = f"recall_at_{CONFIDENT}"


def coco_results(
    data: CocoInstances, predict: Predictor, classes: tuple[str, ...], batch_size: int
) -> tuple[list[dict], int]:
    """Run ``predict`` over the data set; return COCO result records and how many detections
    scored at least :data:`CONFIDENT`.

    Model classes map to the data set's categories by name, so a model whose class ids differ
    from the data set's (torchvision's 91 COCO slots against COCO's 80 categories) still scores.
    """
    by_name = {data.classes[c]: cat for c, cat in data.class_to_cat.items()}
    category = {i: by_name[name] for i, name in enumerate(classes) if name in by_name}
    results, confident = [], 0
    batches = math.ceil(len(data) / batch_size)
    for ids, images in track(_batches(data, batch_size), batches, "evaluate", "batches"):
        for image_id, (boxes, scores, labels, rles) in zip(ids, predict(images)):
            confident += int((np.asarray(scores) >= CONFIDENT).sum())
            for box, score, label, rle in zip(boxes, scores, labels, rles):
                if int(label) not in category:
                    continue
                x1, y1, x2, y2 = (float(v) for v in box)
                counts = rle["counts"]
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": category[int(label)],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(score),
                        "segmentation": {
                            "size": list(rle["size"]),
                            "counts": counts.decode("ascii")
                            if isinstance(counts, bytes)
                            else counts,
                        },
                    }
                )
    return results, confident


def coco_metrics(data: CocoInstances, results: list[dict]) -> dict:
    """AP, AP50 and AP75 for ``bbox`` and ``segm`` (zeros when nothing was detected), and the
    recall a user sees: the share of objects found (IoU >= 0.5, right class) by detections
    scoring at least :data:`CONFIDENT`. AP alone would hide a model that stops reporting
    objects at the server's threshold."""
    metrics = {}
    confident = [r for r in results if r["score"] >= CONFIDENT]
    for iou_type in ("bbox", "segm"):
        if not data.coco.anns:
            continue  # nothing to find: AP is undefined, every detection is a false one
        if not results:
            metrics[iou_type] = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, RECALL: 0.0}
            continue
        ev = _cocoeval(data, results, iou_type)
        metrics[iou_type] = {
            k: round(float(ev.stats[i]), 4) for i, k in enumerate(("AP", "AP50", "AP75"))
        }
        recall = (
            _cocoeval(data, confident, iou_type).eval["recall"][0, :, 0, -1] if confident else []
        )
        found = [float(r) for r in recall if r >= 0]  # -1: a category with no objects
        metrics[iou_type][RECALL] = round(float(np.mean(found)), 4) if found else 0.0
    return metrics


def _cocoeval(data: CocoInstances, results: list[dict], iou_type: str) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
        ev = COCOeval(data.coco, data.coco.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def evaluate(
    data: CocoInstances, predict: Predictor, classes: tuple[str, ...], batch_size: int = 8
) -> dict:
    """Metrics, image count, detections (those at score >= :data:`CONFIDENT` per image too: on
    a set with nothing to find, the false detections a user would see) and seconds of
    ``predict`` over ``data``."""
    started = time.perf_counter()
    results, confident = coco_results(data, predict, classes, batch_size)
    seconds = time.perf_counter() - started
    return {
        **coco_metrics(data, results),
        "images": len(data),
        "detections": len(results),
        f"per_image_at_{CONFIDENT}": round(confident / max(len(data), 1), 3),
        "seconds": round(seconds, 2),
    }
