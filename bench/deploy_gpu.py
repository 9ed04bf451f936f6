"""Benchmark: the deploy graph on a GPU against torchvision's eager ``MaskRCNN`` on the same GPU.

One process, one set of random R50-FPN weights (:func:`maskrt.bench.random_model.random_detector`),
``canvas x canvas`` uint8 images (no resize on either side), for ``--workload``: ``realistic``
(default: a trained COCO detector's work at threshold 0.05, a few thousand candidates before NMS and
30-60 detections after, on :func:`maskrt.bench.random_model.sample_image` letterboxed) or ``worst``
(threshold 0, every image gives ``K`` = 100 detections with masks on both sides; uniform noise
images). Per batch size, CUDA events around the whole forward, median of ``--iters``:

- ``deploy_fp32`` / ``deploy_fp16``: :class:`maskrt.runtime.backends.torch.TorchBackend` (what
  ``maskrt serve --backend torch`` runs), float32 and float16 autocast; masks stay ``M x M``;
- ``torchvision_fp32`` / ``torchvision_fp16``: ``model(list_of_images)`` as torchvision documents
  it, its own mask pasting into the image included, float32 and float16 autocast.

``detections_equal`` says whether each backend found as many detections per image as float32
torchvision. Prints one JSON line.

The torch backend's CUDA settings (``--cuda-graphs``, ``--cuda-roi-align``, ``--channels-last``, or
their ``MASKRT_*`` variables) apply to both deploy rows and are named in the report, so two runs,
with and without, compare them:

    python -m maskrt.bench.deploy_gpu [--canvas 800] [--batches 1,8] [--iters 20] [--workload worst]
    maskrt bench deploy-gpu --cuda-roi-align --cuda-graphs --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from functools import partial

import torch

from maskrt.bench.random_model import WORKLOADS
from maskrt.bench.roi_align_gpu import cuda_median_ms
from maskrt.errors import MaskrtError
from maskrt.runtime.options import RuntimeOptions, add_flags, from_flags


def _torchvision(model, images: torch.Tensor, *, fp16: bool) -> list[int]:
    """torchvision's documented call on float images; the detections per image."""
    cast = torch.autocast("cuda", torch.float16) if fp16 else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        return [len(d["scores"]) for d in model([im.float() / 255.0 for im in images])]


def _deploy(backend, images: torch.Tensor) -> list[int]:
    """The backend's forward; the detections per image (read back, as the server does)."""
    return backend.infer(images).num_detections.cpu().tolist()


FAST_PATH = ("cuda_graphs", "cuda_roi_align", "channels_last")  # RuntimeOptions fields


def _images(workload: str, batch: int, cfg, gen: torch.Generator) -> torch.Tensor:
    """``batch`` uint8 canvases: the sample image letterboxed (realistic), or uniform noise."""
    if workload == "worst":
        shape = (batch, 3, cfg.canvas, cfg.canvas)
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    from maskrt.bench.random_model import sample_image
    from maskrt.model.letterbox import fill_colour, letterbox_batch

    image = torch.from_numpy(sample_image().copy()).permute(2, 0, 1)
    return letterbox_batch([image] * batch, cfg.canvas, fill_colour(cfg.image_mean))[0]


def run(
    canvas: int,
    batches: list[int],
    iters: int,
    warmup: int,
    workload: str = "realistic",
    settings: dict | None = None,
) -> dict:
    """``settings``: the :data:`FAST_PATH` keyword arguments of both deploy backends."""
    from maskrt.bench.random_model import random_detector
    from maskrt.model.checkpoint import LoadedModel
    from maskrt.runtime.backends.torch import TorchBackend

    if not torch.cuda.is_available():
        return {"bench": "deploy_gpu", "skipped": "no CUDA device"}
    model, cfg = random_detector("resnet50_fpn", canvas, seed=0, workload=workload)
    eager = copy.deepcopy(model).cuda().eval()  # the deploy graph shares the modules it wraps
    loaded = LoadedModel(model, cfg, sha256="random weights", source="random_detector")
    settings = settings or {}
    backends = {
        "deploy_fp32": TorchBackend(loaded, "cuda", max(batches), **settings),
        "deploy_fp16": TorchBackend(loaded, "cuda", max(batches), precision="fp16", **settings),
    }
    gen = torch.Generator().manual_seed(1)
    results = []
    for batch in batches:
        images = _images(workload, batch, cfg, gen).cuda()
        runs = {
            "torchvision_fp32": partial(_torchvision, eager, images, fp16=False),
            "torchvision_fp16": partial(_torchvision, eager, images, fp16=True),
            **{name: partial(_deploy, backend, images) for name, backend in backends.items()},
        }
        counts = runs["torchvision_fp32"]()
        row: dict = {"batch": batch, "detections_per_image": counts}
        for name, fn in runs.items():
            row[f"{name}_ms"] = round(cuda_median_ms(torch, fn, warmup, iters), 2)
            row[f"{name}_detections_equal"] = fn() == counts
        row["speedup_fp32"] = round(row["torchvision_fp32_ms"] / row["deploy_fp32_ms"], 2)
        row["speedup_fp16"] = round(row["torchvision_fp16_ms"] / row["deploy_fp16_ms"], 2)
        results.append(row)
    return {
        "bench": "deploy_gpu",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "canvas": canvas,
        "workload": workload,
        "iters": iters,
        "settings": settings,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas", type=int, default=800)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=20, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workload", choices=WORKLOADS, default="realistic")
    add_flags(parser, FAST_PATH)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    try:
        options = from_flags(args, RuntimeOptions, FAST_PATH)
    except MaskrtError as exc:
        print(f"deploy_gpu: {exc}", file=sys.stderr)
        return 2
    settings = {name: getattr(options, name) for name in FAST_PATH}
    report = run(args.canvas, batches, args.iters, args.warmup, args.workload, settings)
    print(json.dumps(report))
    return 0 if "skipped" not in report else 2


if __name__ == "__main__":
    sys.exit(main())
