"""Micro-benchmark: maskrt's multi-level RoIAlign kernel against torchvision on a GPU.

R50-FPN shapes of a 1344 x 1344 canvas (C = 256, P2..P5 = 336, 168, 84, 42), 1000 proposals per
image, float32 and float16 features, output 7 (box head) and 14 (mask head), sampling ratio 2,
aligned=False (torchvision's Mask R-CNN). Three timings per case, CUDA events, median of --iters:

- ``maskrt_ms``: our kernel (one launch, all levels), through its PyTorch binding;
- ``torchvision_pooler_ms``: ``torchvision.ops.MultiScaleRoIAlign`` (what torchvision's Mask R-CNN
  runs: level mapping, one ``roi_align`` per level, gathers and scatters);
- ``torchvision_kernels_ms``: only torchvision's four per-level ``roi_align`` calls on RoIs already
  split by level (its kernels alone, a lower bound for any torchvision-based pooler).

``max_abs_err`` is against torchvision in float32 on the same (for float16: up-cast) values.
Prints one JSON line. Usage: ``python bench/roi_align_gpu.py [--boxes 1000] [--iters 50]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import OrderedDict

CANVAS = 1344
CHANNELS = 256
STRIDES = (4, 8, 16, 32)
NAMES = ["p2", "p3", "p4", "p5"]


def _proposals(torch, boxes: int, batch: int, seed: int):
    """RPN-like proposals: centres anywhere on the canvas, sides log-uniform in [16, 1344] with
    aspect ratios in [1/3, 3], clipped to the canvas (as torchvision's RPN does)."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, boxes, 2, generator=gen) * CANVAS
    side = torch.exp(
        torch.empty(batch, boxes, 1).uniform_(math.log(16), math.log(CANVAS), generator=gen)
    )
    aspect = torch.exp(
        torch.empty(batch, boxes, 1).uniform_(-math.log(3), math.log(3), generator=gen)
    )
    wh = torch.cat([side * aspect.sqrt(), side / aspect.sqrt()], dim=-1)
    xyxy = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1).clamp(0, CANVAS)
    return xyxy.cuda()


def cuda_median_ms(torch, fn, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` between CUDA events, after ``warmup`` unmeasured calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(boxes: int = 1000, batch: int = 1, iters: int = 50, warmup: int = 10) -> dict:
    import torch
    from torchvision.ops import MultiScaleRoIAlign, roi_align
    from torchvision.ops.poolers import LevelMapper

    from maskrt.plugins.torch_ext import load_extension

    if not torch.cuda.is_available():
        return {
            "bench": "roi_align_gpu",
            "skipped": "no CUDA device (torch.cuda.is_available() is False)",
        }
    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    ext = load_extension()

    rois = _proposals(torch, boxes, batch, seed=0)
    flat = rois.reshape(-1, 4)
    levels = LevelMapper(2, 5)([flat])
    image = torch.arange(batch, device="cuda", dtype=torch.float32).repeat_interleave(boxes)
    rois5 = torch.cat([image[:, None], flat], dim=1)
    gen = torch.Generator(device="cuda").manual_seed(1)
    feats32 = [
        torch.randn(batch, CHANNELS, CANVAS // s, CANVAS // s, generator=gen, device="cuda")
        for s in STRIDES
    ]

    results = []
    for dtype in (torch.float32, torch.float16):
        feats = [f.to(dtype) for f in feats32]
        per_level = [rois5[levels == i].to(dtype) for i in range(len(STRIDES))]
        for output_size in (7, 14):
            pooler = MultiScaleRoIAlign(NAMES, output_size=output_size, sampling_ratio=2)
            fmap = OrderedDict(zip(NAMES, feats))
            boxes_list = [r.to(dtype) for r in rois]
            shapes = [(CANVAS, CANVAS)] * batch

            def ours():
                return ext.multilevel_roi_align(rois, feats, output_size, 2, False, 224, 4, 2)

            def theirs():
                return pooler(fmap, boxes_list, shapes)

            def their_kernels():
                return [
                    roi_align(f, r, output_size, 1.0 / s, 2, False)
                    for f, r, s in zip(feats, per_level, STRIDES)
                ]

            exact = MultiScaleRoIAlign(NAMES, output_size=output_size, sampling_ratio=2)(
                OrderedDict(zip(NAMES, [f.float() for f in feats])), list(rois), shapes
            )
            err = (ours().float().flatten(0, 1) - exact).abs().max().item()
            t_ours = cuda_median_ms(torch, ours, warmup, iters)
            t_pooler = cuda_median_ms(torch, theirs, warmup, iters)
            t_kernels = cuda_median_ms(torch, their_kernels, warmup, iters)
            results.append(
                {
                    "dtype": str(dtype).replace("torch.", ""),
                    "output_size": output_size,
                    "maskrt_ms": round(t_ours, 4),
                    "torchvision_pooler_ms": round(t_pooler, 4),
                    "torchvision_kernels_ms": round(t_kernels, 4),
                    "speedup_vs_pooler": round(t_pooler / t_ours, 2),
                    "speedup_vs_kernels": round(t_kernels / t_ours, 2),
                    "max_abs_err": err,
                }
            )
    return {
        "bench": "roi_align_gpu",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "canvas": CANVAS,
        "channels": CHANNELS,
        "maps": [CANVAS // s for s in STRIDES],
        "boxes": boxes,
        "batch": batch,
        "sampling_ratio": 2,
        "aligned": False,
        "iters": iters,
        "rois_per_level": torch.bincount(levels, minlength=len(STRIDES)).tolist(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1000, help="proposals per image")
    parser.add_argument("--batch", type=int, default=1, help="images")
    parser.add_argument("--iters", type=int, default=50, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    report = run(args.boxes, args.batch, args.iters, args.warmup)
    print(json.dumps(report))
    return 0 if "skipped" not in report else 2


if __name__ == "__main__":
    sys.exit(main())
