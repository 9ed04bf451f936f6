"""Shared by the deploy-graph, ONNX export and backend tests: random-weight models with forced
detections, torchvision's eager reference, detection matching, and exports cached per process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from torchvision.ops import box_iou

from maskrt.model.build import build_model
from maskrt.model.config import get_config


def make_model(name: str, seed: int = 0, calibrate: bool = True, **changes):
    """A random-weight model whose detections are forced (``score_threshold=0``) and spread: the
    class logits and box deltas are scaled to the box features (a random ResNet-50's are large) so
    no two class scores tie at 1.0 and the order is defined; non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    cfg = get_config(name).replace(score_threshold=0.0, **changes)
    model = build_model(cfg).eval()
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        if not calibrate:
            return model, cfg
        seen = []
        hook = predictor.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        eager(model, images(1, cfg.canvas, seed=99))
        hook.remove()
        norm = float(seen[0].norm(dim=1).mean())
        predictor.cls_score.weight.normal_(0, 2.0 / norm)  # logits with std ~2
        predictor.bbox_pred.weight.normal_(0, 1.0 / norm)  # deltas with std ~1
    return model, cfg


def images(batch: int, canvas: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, canvas, canvas), generator=g, dtype=torch.uint8)


def eager(model, imgs: torch.Tensor) -> list[dict]:
    """torchvision's own inference up to (not including) the full-image mask pasting."""
    with torch.inference_mode():
        image_list, _ = model.transform([i.float() / 255.0 for i in imgs])
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    return detections


def match(out, b: int, ref: dict, box_iou_min: float = 0.99) -> list[tuple[int, int]]:
    """One-to-one pairs (row of ours, row of torchvision's) with the same class and box IoU >=
    ``box_iou_min``, greedy in score order; asserts every detection on both sides is paired."""
    n = int(out.num_detections[b])
    assert n == len(ref["boxes"]), f"image {b}: {n} detections vs torchvision's {len(ref['boxes'])}"
    iou = box_iou(out.boxes[b, :n], ref["boxes"]) if n else torch.zeros(0, 0)
    same = out.classes[b, :n, None].long() == ref["labels"][None]
    iou = torch.where(same, iou, torch.zeros_like(iou))
    pairs, used = [], set()
    for i in range(n):
        order = torch.argsort(iou[i], descending=True).tolist()
        j = next((j for j in order if j not in used and iou[i, j] >= box_iou_min), None)
        assert j is not None, f"image {b}: detection {i} ({out.boxes[b, i].tolist()}) has no match"
        used.add(j)
        pairs.append((i, j))
    return pairs


def loaded(
    name: str = "shapes", seed: int = 0, calibrate: bool = True, **changes
) -> SimpleNamespace:
    """A ``LoadedModel``-like object (``.model``, ``.config``, ``.sha256``, ``.version``)."""
    model, cfg = make_model(name, seed, calibrate, **changes)
    sha = f"{seed:02d}" + "ab" * 31
    return SimpleNamespace(
        model=model,
        config=cfg,
        sha256=sha,
        version=sha[:12],
        source="test",
        meta={},
        weights_verified=False,
    )


_TMP = Path(tempfile.mkdtemp(prefix="maskrt-onnx-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def exported(name: str = "shapes", max_batch: int = 3, **changes) -> tuple[Path, SimpleNamespace]:
    """(ONNX path, the LoadedModel-like it came from), exported once per process."""
    return _exported(name, max_batch, tuple(sorted(changes.items())))


@functools.cache
def _exported(name: str, max_batch: int, changes: tuple) -> tuple[Path, SimpleNamespace]:
    from maskrt.export.onnx import export_onnx

    model = loaded(name, **dict(changes))
    out = _TMP / f"{name}-{max_batch}-{abs(hash(changes))}.onnx"
    export_onnx(model, out, "onnxruntime", max_batch=max_batch)
    return out, model


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a >= 0.5, b >= 0.5
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def as_reference(out, b: int) -> dict:
    """Row ``b`` of deploy-graph outputs in torchvision's detection-dict form (for :func:`match`)."""
    n = int(out.num_detections[b])
    return {
        "boxes": torch.as_tensor(out.boxes[b, :n]).float(),
        "labels": torch.as_tensor(out.classes[b, :n]).long(),
        "scores": torch.as_tensor(out.scores[b, :n]).float(),
        "masks": torch.as_tensor(out.masks[b, :n]).float(),
    }


def assert_outputs_match(
    actual, expected, box_iou_min: float = 0.99, mask_iou_min: float = 0.98
) -> int:
    """Deploy-graph outputs of two backends agree: same counts, every detection paired with one of
    the same class, box IoU >= ``box_iou_min``, mask IoU (at 0.5) >= ``mask_iou_min``; padding zero.
    Returns the number of pairs."""
    actual = type(expected)(*(torch.as_tensor(t).cpu() for t in actual))
    expected = type(expected)(*(torch.as_tensor(t).cpu() for t in expected))
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
    pairs = 0
    for b in range(len(expected.num_detections)):
        ref = as_reference(expected, b)
        for i, j in match(actual, b, ref, box_iou_min):
            assert mask_iou(actual.masks[b, i], ref["masks"][j]) >= mask_iou_min
            assert abs(float(actual.scores[b, i]) - float(ref["scores"][j])) < 1e-3
            pairs += 1
        n = int(actual.num_detections[b])
        assert not actual.boxes[b, n:].any() and not actual.masks[b, n:].any()
    return pairs


def roi_align_nodes(model) -> list:
    """The ``com.maskrt::MultiLevelRoIAlign`` nodes of an onnxruntime-target model's main graph
    (what the TensorRT rewrite replaces)."""
    from maskrt.export.onnx_ops import DOMAIN, ROI_ALIGN_OP

    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == ROI_ALIGN_OP]


def assert_same_detections(actual, expected, box_atol: float = 1e-3) -> None:
    """The float32 rule of the CUDA fast path: the same counts and classes row by row, boxes
    within ``box_atol`` canvas pixels, scores and mask probabilities within float rounding."""
    actual = type(expected)(*(torch.as_tensor(t).cpu() for t in actual))
    expected = type(expected)(*(torch.as_tensor(t).cpu() for t in expected))
    assert torch.equal(actual.num_detections, expected.num_detections)
    assert torch.equal(actual.classes, expected.classes)
    torch.testing.assert_close(actual.boxes, expected.boxes, rtol=0, atol=box_atol)
    torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=1e-4)
    torch.testing.assert_close(actual.masks, expected.masks, rtol=0, atol=1e-3)


def assert_top_found(actual, expected, top: int = 20, box_iou_min: float = 0.95) -> None:
    """The reduced-precision rule: each of the ``top`` best detections of either side has one of
    the same class on the other side (anywhere in its ``K`` rows) with box IoU >= ``box_iou_min``
    (ranks near ``K`` may trade places, so only the top ones must be found)."""
    for a, e in ((actual, expected), (expected, actual)):
        for b in range(len(e.num_detections)):
            ref = as_reference(a, b)
            n = min(top, int(e.num_detections[b]))
            iou = box_iou(torch.as_tensor(e.boxes[b, :n]).cpu().float(), ref["boxes"])
            same = torch.as_tensor(e.classes[b, :n]).cpu().long()[:, None] == ref["labels"][None]
            iou = torch.where(same, iou, torch.zeros_like(iou))
            best = iou.max(1).values if iou.shape[1] else torch.zeros(n)
            assert (best >= box_iou_min).all(), f"image {b}: best IoUs {best.tolist()}"
