"""A detector with random weights whose box head does the work of a trained one.

Two workloads, both deterministic in the seed and the same weights for every server compared:

- ``realistic`` (default): the config's score threshold (0.05), and a box predictor calibrated so
  that an ordinary photo gives what a trained COCO R50-FPN gives: a few thousand class scores above
  the threshold before NMS (:data:`CANDIDATES` on the calibration image) and 30-60 detections after
  it (:data:`DETECTIONS`). The class logits are a random projection of the box features centred on
  the calibration image's mean, over at most :data:`ACTIVE_CLASSES` classes (the rest far below),
  with the background's bias searched for the candidate count. The RPN's box regression is scaled
  down (:data:`RPN_DELTA_SCALE`) so that its proposals stay near their anchors, as a trained RPN's
  do (random weights shrink a quarter of them below 20 px). Random proposals do not cluster on
  objects the way a trained RPN's do, so a class's candidates overlap only when its boxes are
  widened: the box regression's width and height bias is searched for the detection count, and the
  boxes are larger than a trained model's (many span most of the canvas). Where the widest boxes
  still leave more than :data:`MOST_DETECTIONS`, one class fewer is tried.
- ``worst``: score threshold 0 and the box predictor scaled by the feature norm, so the scores
  spread and every image gives ``max_detections`` detections with masks (90,000 candidates per
  image through NMS at 1000 proposals).

The checkpoint ``maskrt bench peers --model r50`` makes, written to a file (for ``maskrt export
onnx --model`` and ``maskrt bench onnx-compare``):

    python -m maskrt.bench.random_model --canvas 640 --out r50.pt [--workload worst]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN

from maskrt.model.build import build_model
from maskrt.model.config import ModelConfig, get_config

WORKLOADS = ("realistic", "worst")
CANDIDATES = 3000  # class scores above the threshold before NMS, on the calibration image
DETECTIONS = 45  # after class-wise NMS, on the calibration image
MOST_DETECTIONS = 60  # else the calibration tries again over one class fewer
ACTIVE_CLASSES = 5  # classes that score at all (at most); the others' logits sit INACTIVE below
INACTIVE = 30.0
LOGIT_SPREAD = 1.0  # std of an active class's logit over the calibration image's proposals
RPN_DELTA_SCALE = 0.1  # the random RPN's box regression, scaled: proposals near their anchors


def sample_image() -> np.ndarray:
    """The image the realistic workload is calibrated on and ``bench peers`` sends: a shapes
    sample with four shapes, enlarged to a camera-sized 640x480 (uint8 RGB ``[H, W, 3]``)."""
    from PIL import Image

    from maskrt.model.shapes import generate

    image = Image.fromarray(generate(7, 19).image).resize((640, 480), Image.Resampling.BILINEAR)
    return np.asarray(image)


def random_detector(
    config: str,
    canvas: int,
    *,
    seed: int = 0,
    max_detections: int = 100,
    workload: str = "realistic",
) -> tuple[MaskRCNN, ModelConfig]:
    """``config``'s layout at ``canvas`` with random weights from ``seed``, its box predictor set
    for ``workload`` (see the module's docstring)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload {workload!r}: one of {', '.join(WORKLOADS)}")
    torch.manual_seed(seed)
    base = get_config(config)
    threshold = base.score_threshold if workload == "realistic" else 0.0
    cfg = base.replace(canvas=canvas, score_threshold=threshold, max_detections=max_detections)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    if workload == "realistic":
        with torch.no_grad():
            model.rpn.head.bbox_pred.weight.mul_(RPN_DELTA_SCALE)
            model.rpn.head.bbox_pred.bias.zero_()
        _calibrate(model, g)
    else:
        _spread_scores(model, g, canvas)
    return model, cfg


def _spread_scores(model: MaskRCNN, g: torch.Generator, canvas: int) -> None:
    """The worst case: predictor weights scaled by the feature norm on a random image."""
    image = torch.randint(0, 256, (3, canvas, canvas), dtype=torch.uint8, generator=g)
    features, _, _ = _box_head_inputs(model, image.float() / 255.0)
    norm = float(features.norm(dim=1).mean())
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.normal_(0, 2.0 / norm, generator=g)
        predictor.bbox_pred.weight.normal_(0, 1.0 / norm, generator=g)


def _box_head_inputs(model: MaskRCNN, image: torch.Tensor):
    """One forward on ``image``: the box predictor's input features, the proposals and the image
    sizes the ROI heads saw."""
    seen: dict = {}
    heads = model.roi_heads
    hooks = [
        heads.register_forward_pre_hook(lambda m, a: seen.update(proposals=a[1], sizes=a[2])),
        heads.box_predictor.register_forward_pre_hook(lambda m, a: seen.update(features=a[0])),
    ]
    try:
        with torch.inference_mode():
            model([image])
    finally:
        for hook in hooks:
            hook.remove()
    return seen["features"], seen["proposals"], seen["sizes"]


def workload_counts(model: MaskRCNN, image: torch.Tensor) -> tuple[int, int]:
    """What ``model`` does on ``image`` (float RGB ``[3, H, W]`` in 0-1): the class scores above
    its threshold before NMS, and the detections after NMS (uncapped by ``max_detections``)."""
    return _counts(model, *_box_head_inputs(model, image))


def _counts(model: MaskRCNN, features, proposals, sizes) -> tuple[int, int]:
    heads = model.roi_heads
    cap = heads.detections_per_img
    heads.detections_per_img = len(features) * (heads.box_predictor.cls_score.out_features - 1)
    try:
        with torch.inference_mode():
            logits, regression = heads.box_predictor(features)
            _, scores, _ = heads.postprocess_detections(logits, regression, proposals, sizes)
    finally:
        heads.detections_per_img = cap
    candidates = int((logits.softmax(-1)[:, 1:] > heads.score_thresh).sum())
    return candidates, len(scores[0])


def _calibrate(model: MaskRCNN, g: torch.Generator) -> None:
    """The realistic workload: class logits and box sizes searched on :func:`sample_image` for
    :data:`CANDIDATES` and :data:`DETECTIONS`, over fewer active classes where the widest boxes
    still leave more than :data:`MOST_DETECTIONS`."""
    image = torch.from_numpy(sample_image().copy()).permute(2, 0, 1).float() / 255.0
    inputs = _box_head_inputs(model, image)
    features = inputs[0]
    predictor = model.roi_heads.box_predictor
    classes = predictor.cls_score.out_features
    mean = features.mean(0)
    spread = float((features - mean).norm(dim=1).mean())
    size_weight = model.roi_heads.box_coder.weights[2]

    def background(value: float) -> int:
        predictor.cls_score.bias[0] = value
        return _counts(model, *inputs)[0]

    def widen(log_scale: float) -> int:
        predictor.bbox_pred.bias.view(-1, 4)[:, 2:] = size_weight * log_scale
        return _counts(model, *inputs)[1]

    with torch.no_grad():
        for active in range(ACTIVE_CLASSES, 0, -1):
            weight = torch.randn(predictor.cls_score.weight.shape, generator=g)
            weight *= LOGIT_SPREAD / spread
            weight[0] = 0
            bias = -(weight @ mean) - INACTIVE
            bias[1 + torch.randperm(classes - 1, generator=g)[:active]] += INACTIVE
            predictor.cls_score.weight.copy_(weight)
            predictor.cls_score.bias.copy_(bias)
            predictor.bbox_pred.weight.normal_(0, 0.1 / spread, generator=g)
            predictor.bbox_pred.bias.zero_()
            _search(background, -INACTIVE, INACTIVE, CANDIDATES)
            if _search(widen, 0.0, math.log(1000.0 / 16), DETECTIONS) <= MOST_DETECTIONS:
                return


def _search(count: Callable[[float], int], low: float, high: float, target: int) -> int:
    """Bisect ``count``'s argument (``count`` falls as it grows) to where it crosses ``target``,
    leaving the model set there; the count there."""
    for _ in range(24):
        middle = (low + high) / 2
        if count(middle) > target:
            low = middle
        else:
            high = middle
    return count(high)


def save_random_checkpoint(
    path: Path, config: str, canvas: int, *, seed: int = 0, workload: str = "realistic"
) -> Path:
    """:func:`random_detector`'s model written as a maskrt checkpoint at ``path``."""
    from maskrt.model.checkpoint import save_checkpoint

    model, cfg = random_detector(config, canvas, seed=seed, workload=workload)
    source = f"bench: random weights, seed {seed}, {workload} workload"
    return save_checkpoint(path, model, cfg, {"source": source})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="resnet50_fpn", help="the layout")
    parser.add_argument("--canvas", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", choices=WORKLOADS, default="realistic")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    args = parser.parse_args(argv)
    save_random_checkpoint(
        args.out, args.config, args.canvas, seed=args.seed, workload=args.workload
    )
    print(
        f"wrote {args.out}: {args.config}, random weights (seed {args.seed}), canvas {args.canvas}, "
        f"{args.workload} workload"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
