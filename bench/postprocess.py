"""Benchmark (a): post-processing of 100 masks on a 1920x1080 image, ours against torchvision.

Both sides start from one image's deploy-graph outputs on the device (canvas boxes, scores,
classes, 28x28 mask probabilities) and end with COCO RLE dicts on the host:

- ours: :func:`maskrt.runtime.postprocess.postprocess_image` (window-only paste on the device,
  run boundaries to the host, vectorised RLE);
- reference: ``boxes_to_original``, torchvision's ``paste_masks_in_image`` into the full image,
  ``> 0.5``, then ``pycocotools.mask.encode`` of each full mask in Fortran order, exactly as
  torchvision's detection references (``coco_eval.py``) do.

Every run checks that the two give identical RLE bytes. Prints one JSON line.

    python -m maskrt.bench.postprocess [--device cpu|cuda] [--runs 7] [--masks 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from maskrt.runtime.rle import Rle


def make_inputs(
    num: int, width: int, height: int, canvas: int, mask_size: int, seed: int, device: torch.device
):
    """Random detections: box sides log-uniform from 8 px to 90% of the image side, centres
    uniform (boxes may cross the border: they are clipped like real ones), smooth mask-like
    probabilities (sigmoid of upsampled noise, as a mask head gives)."""
    from maskrt.model.letterbox import Letterbox

    lb = Letterbox.fit(width, height, canvas)
    g = torch.Generator().manual_seed(seed)
    cw = torch.exp(torch.empty(num).uniform_(np.log(8), np.log(0.9 * width), generator=g))
    ch = torch.exp(torch.empty(num).uniform_(np.log(8), np.log(0.9 * height), generator=g))
    cx = torch.rand(num, generator=g) * width
    cy = torch.rand(num, generator=g) * height
    boxes = torch.stack([cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2], dim=1)
    rx, ry = lb.ratio
    boxes = boxes / torch.tensor([rx, ry, rx, ry])  # to canvas pixels
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, lb.resized_width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, lb.resized_height)
    noise = torch.randn(num, 1, 6, 6, generator=g) * 3 + 1
    masks = torch.sigmoid(
        F.interpolate(noise, size=(mask_size, mask_size), mode="bilinear", align_corners=False)
    )[:, 0]
    scores = torch.sort(torch.rand(num, generator=g), descending=True).values
    classes = torch.randint(1, 4, (num,), generator=g, dtype=torch.int32)
    return (boxes.to(device), scores.to(device), classes.to(device), masks.to(device), lb)


def reference(boxes, masks, lb) -> list[Rle]:
    """What a user of torchvision does: full-image paste, threshold, pycocotools per mask."""
    import pycocotools.mask as mask_util
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrt.model.letterbox import boxes_to_original

    orig = boxes_to_original(boxes, lb)
    full = paste_masks_in_image(masks.float()[:, None], orig, (lb.height, lb.width)) > 0.5
    full = full.cpu().numpy()
    out = []
    for m in full:
        rle = mask_util.encode(np.array(m[0, :, :, np.newaxis], dtype=np.uint8, order="F"))[0]
        size = [int(v) for v in rle["size"]]
        out.append(Rle(size=size, counts=rle["counts"].decode("ascii")))
    return out


def ours(boxes, scores, classes, masks, lb, strategy: str) -> list[Rle]:
    from maskrt.runtime.postprocess import postprocess_image

    dets = postprocess_image(
        boxes,
        scores,
        classes,
        masks,
        len(scores),
        lb,
        score_threshold=0.0,
        want_masks=True,
        strategy=strategy,
    )
    return [d["mask"] for d in dets]


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m maskrt.bench.postprocess", description=__doc__.splitlines()[0]
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--masks", type=int, default=100)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--canvas", type=int, default=800)
    p.add_argument("--mask-size", type=int, default=28)
    p.add_argument("--runs", type=int, default=7, help="timed runs of each side (median)")
    p.add_argument("--half", action="store_true", help="float16 masks")
    p.add_argument("--strategy", default="auto", choices=("auto", "vectorized", "interpolate"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op CPU threads for both sides (0: leave torch's default)",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    boxes, scores, classes, masks, lb = make_inputs(
        args.masks, args.width, args.height, args.canvas, args.mask_size, args.seed, device
    )
    if args.half:
        masks = masks.half()

    # Warm-up (allocators, recipe calibration on a GPU, lazy imports), checked too.
    identical = ours(boxes, scores, classes, masks, lb, args.strategy) == reference(
        boxes, masks, lb
    )
    t_ours, t_ref = [], []
    for _ in range(args.runs):
        a, dt = _timed(lambda: ours(boxes, scores, classes, masks, lb, args.strategy), device)
        t_ours.append(dt)
        b, dt = _timed(lambda: reference(boxes, masks, lb), device)
        t_ref.append(dt)
        identical = identical and a == b
    from maskrt.runtime.postprocess import paste_strategy

    ours_ms = statistics.median(t_ours) * 1e3
    ref_ms = statistics.median(t_ref) * 1e3
    print(
        json.dumps(
            {
                "bench": "postprocess",
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else "cpu",
                "torch_threads": torch.get_num_threads(),
                "image": [args.height, args.width],
                "masks": args.masks,
                "mask_dtype": str(masks.dtype).replace("torch.", ""),
                "strategy": paste_strategy(device) if args.strategy == "auto" else args.strategy,
                "runs": args.runs,
                "ours_ms": round(ours_ms, 3),
                "reference_ms": round(ref_ms, 3),
                "speedup": round(ref_ms / ours_ms, 2),
                "identical": bool(identical),
            }
        )
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
