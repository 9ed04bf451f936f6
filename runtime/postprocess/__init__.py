"""Post-processing of the deploy graph's outputs: the one place that turns them into detections.

Per image: keep the valid rows with ``score >= score_threshold`` (at most ``max_detections``, in
the graph's descending score order), map the boxes back to the original image with
:func:`maskrt.model.letterbox.boxes_to_original`, paste each ``M x M`` mask into its box, threshold
it and COCO-RLE-encode it. Both the server and the evaluation call :func:`postprocess_batch`
(or :func:`postprocess_image`).

Modules: :mod:`.geometry` (where each mask goes, host integer pixels), :mod:`.recipes` (float32
bilinear evaluation orders and their calibration), :mod:`.transitions` (paste and run boundaries
on the device); this module is the API.

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
come back to the host; :mod:`maskrt.runtime.rle` folds the zeros outside the window into the runs.
No full-image mask exists anywhere.

Exactness. A bilinear value can sit within an ulp of 0.5, so equality with torchvision needs the
same float32 arithmetic as ``F.interpolate`` on that device, and that differs: the CPU kernel is
built per instruction set (AVX2/AVX-512 builds contract ``a*b + c`` into fused multiply-adds, the
baseline build does not) and takes another code path when ``h + w <= 128``; CUDA has its own.
The vectorised paste therefore evaluates one of a few *recipes* (operation order, fused or not,
fused multiply-adds emulated exactly through float64), and :func:`~.recipes.recipes_for` picks, once per
device and regime, the recipe that reproduces ``F.interpolate`` bit for bit on a set of probes.
Where none does, that regime falls back to calling ``F.interpolate`` per box (exact by
construction, slower on a GPU). On the CPU the per-box ``F.interpolate`` path is also the faster
one and is the default there (see :func:`~.transitions.paste_strategy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NotRequired, TypedDict, TypeVar

import numpy as np
import torch
from torch import Tensor

from maskrt.model.letterbox import Letterbox, boxes_to_original
from maskrt.runtime.backends.base import DeployOutputs
from maskrt.runtime.postprocess.geometry import paste_geometry
from maskrt.runtime.postprocess.recipes import recipes_for
from maskrt.runtime.postprocess.transitions import paste_strategy, paste_transitions
from maskrt.runtime.rle import Rle, rle_from_transitions

__all__ = [
    "Detection",
    "paste_strategy",
    "postprocess_batch",
    "postprocess_image",
    "recipes_for",
]

T = TypeVar("T")


class Detection(TypedDict):
    """One detection as the API answers it (``label`` only with labels, ``mask`` only where
    masks are wanted)."""

    box: list[float]  # x1, y1, x2, y2 in original-image pixels
    score: float
    class_id: int  # 1-based
    label: NotRequired[str]
    mask: NotRequired[Rle]


class _HostOutputs:
    """The small outputs of a batch on the host, from one device->host copy."""

    def __init__(self, outputs: DeployOutputs, batch: int) -> None:
        k = outputs.boxes.shape[1]
        small = (
            torch.cat(
                [
                    outputs.boxes.reshape(batch, k * 4).to(torch.float32),
                    outputs.scores.reshape(batch, k).to(torch.float32),
                    outputs.classes.reshape(batch, k).to(torch.int32).view(torch.float32),
                    outputs.num_detections.reshape(batch, 1).to(torch.int32).view(torch.float32),
                ],
                dim=1,
            )
            .cpu()
            .numpy()
        )
        self.k = k
        self.boxes = small[:, : 4 * k].reshape(batch, k, 4)
        self.scores = small[:, 4 * k : 5 * k]
        self.classes = small[:, 5 * k : 6 * k].view(np.int32)
        self.num = small[:, 6 * k].view(np.int32)

    def kept_rows(self, b: int, threshold: float, limit: int | None) -> np.ndarray:
        """Rows of image ``b`` under ``num_detections`` scoring at least ``threshold``, the
        first ``limit`` of them."""
        n = int(min(max(int(self.num[b]), 0), self.k))
        keep = np.flatnonzero(self.scores[b, :n].astype(np.float64) >= float(threshold))
        return keep if limit is None else keep[: max(int(limit), 0)]


def _per_image(value: T | Sequence[T], count: int, name: str) -> list[T]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name}: {len(value)} values for {count} images")
        return list(value)
    return [value] * count  # type: ignore[list-item]


def _records(
    orig: np.ndarray, scores: np.ndarray, classes: np.ndarray, labels: Sequence[str] | None
) -> list[Detection]:
    recs: list[Detection] = []
    for box, score, cls in zip(orig.tolist(), scores.tolist(), classes.tolist()):
        rec: Detection = {"box": box, "score": score, "class_id": cls}
        if labels is not None:
            rec["label"] = labels[cls] if 0 <= cls < len(labels) else str(cls)
        recs.append(rec)
    return recs


def _attach_masks(
    records: list[list[Detection]],
    masks: Tensor,
    letterboxes: Sequence[Letterbox],
    wanted: list[tuple[int, np.ndarray, np.ndarray]],
    k: int,
    strategy: str,
) -> None:
    """Paste the kept masks of the ``wanted`` images (image, rows kept, original boxes) in one
    go and give each record its RLE."""
    counts = [len(keep) for _, keep, _ in wanted]
    img_h = np.repeat([letterboxes[b].height for b, _, _ in wanted], counts).astype(np.int64)
    img_w = np.repeat([letterboxes[b].width for b, _, _ in wanted], counts).astype(np.int64)
    m_size = masks.shape[-1]
    geom = paste_geometry(np.concatenate([o for _, _, o in wanted]), img_h, img_w, m_size)
    rows = np.concatenate([b * k + keep for b, keep, _ in wanted])
    flat_masks = masks.reshape(-1, masks.shape[-2], m_size)
    chosen = flat_masks.index_select(0, torch.from_numpy(rows).to(flat_masks.device))
    lin, ids = paste_transitions(chosen, geom, strategy=strategy)
    rles = iter(rle_from_transitions(lin, ids, np.stack([img_h, img_w], axis=1)))
    for b, _, _ in wanted:
        for rec in records[b]:
            rec["mask"] = next(rles)


def postprocess_batch(
    outputs: DeployOutputs,
    letterboxes: Sequence[Letterbox],
    *,
    score_threshold: float | Sequence[float] = 0.0,
    max_detections: int | Sequence[int | None] | None = None,
    want_masks: bool | Sequence[bool] = True,
    labels: Sequence[str] | None = None,
    strategy: str = "auto",
) -> list[list[Detection]]:
    """Detections of a batch from the deploy graph's outputs (``num_detections [B]``, ``boxes
    [B, K, 4]``, ``scores [B, K]``, ``classes [B, K]``, ``masks [B, K, M, M]``; any device)
    and each image's :class:`Letterbox`.

    Per image (a scalar applies to all): keep rows ``< num_detections`` with
    ``score >= score_threshold``, the first ``max_detections`` of them (``None``: all), in the
    graph's order (descending score), as :class:`Detection` records (``label`` only with
    ``labels``, indexed by class id; ``mask`` only where masks are wanted).

    One device->host copy brings the small tensors; the masks are pasted on their device; one
    copy brings back the run boundaries of all masks of the batch.
    """
    bsz = len(letterboxes)
    thresholds = _per_image(score_threshold, bsz, "score_threshold")
    limits = _per_image(max_detections, bsz, "max_detections")
    wants = _per_image(want_masks, bsz, "want_masks")
    host = _HostOutputs(outputs, bsz)
    records: list[list[Detection]] = []
    wanted: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image, rows kept, original boxes)
    for b, lb in enumerate(letterboxes):
        keep = host.kept_rows(b, thresholds[b], limits[b])
        orig = boxes_to_original(torch.from_numpy(host.boxes[b, keep]), lb).numpy()
        records.append(_records(orig, host.scores[b, keep], host.classes[b, keep], labels))
        if wants[b] and len(keep):
            wanted.append((b, keep, orig))
    if wanted:
        _attach_masks(records, outputs.masks, letterboxes, wanted, host.k, strategy)
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
) -> list[Detection]:
    """One image's slice of the outputs (``[K, 4]``, ``[K]``, ``[K]``, ``[K, M, M]``); see
    :func:`postprocess_batch`."""
    num = torch.as_tensor(num_detections, dtype=torch.int32, device=boxes.device).reshape(1)
    if masks is None:  # never read: no image wants masks
        masks, want_masks = boxes.new_empty((len(boxes), 0, 0)), False
    outputs = DeployOutputs(num, boxes[None], scores[None], classes[None], masks[None])
    return postprocess_batch(
        outputs,
        [letterbox],
        score_threshold=score_threshold,
        max_detections=max_detections,
        want_masks=want_masks,
        labels=labels,
        strategy=strategy,
    )[0]
