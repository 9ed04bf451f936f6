"""Benchmark: our R50-FPN deploy graph in ONNX Runtime (CPU) against torchvision on the CPU.

One process, one set of random weights, one input image (uint8, canvas x canvas, so no resize
happens on either side), detections forced (score threshold 0, K = 100 on every path):

- ``ours``: the ``onnxruntime``-target ONNX of :class:`maskrt.model.deploy.DeployGraph`, run by
  :class:`maskrt.runtime.backends.onnxruntime.OnnxRuntimeBackend` (the server's session options);
  outputs the 28x28 masks (the server pastes them itself);
- ``ours_paste``: the same plus torchvision's ``paste_masks_in_image`` of the 100 masks into the full
  image, so its output matches torchvision's;
- ``torchvision``: ``maskrcnn_resnet50_fpn(...)`` eager forward, its own full-image mask pasting
  included (``torch.inference_mode``, the same number of threads);
- ``torchvision_onnx``: torchvision's model exported by ``torch.onnx.export`` as it is (first the
  ``dynamo=True`` exporter, then the TorchScript one) and run in ONNX Runtime with the same session
  options; where this torch cannot export it, the JSON says which exporter failed and how.

Prints one JSON object and one markdown table row. Takes minutes on a 2-core machine.

    python -m maskrt.bench.onnx_cpu [--canvas 800] [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _timed(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return {
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "runs_ms": [round(t, 1) for t in times],
    }


def _error(exc: BaseException) -> str:
    """The root cause of an exception chain in one line, with the torch.export guard and the
    library line that caused it when there is one."""
    import re

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    root = chain[-1]
    text = " ".join(str(e) for e in chain)
    parts = [f"{type(root).__name__}: {(str(root).strip().splitlines() or [''])[0][:300]}"]
    caused = re.search(r"Caused by: \(([^)]+)\)", text)
    if caused:
        parts.append(f"at {caused.group(1)}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canvas", type=int, default=800, help="image side (default 800)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per path (default 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        help="threads for torch and ONNX Runtime (default: the cores this process may use)",
    )
    parser.add_argument("--detections", type=int, default=100, help="K (default 100)")
    parser.add_argument(
        "--skip-stock", action="store_true", help="skip torchvision's own ONNX export"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch
    import torchvision
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrt.bench.random_model import random_detector
    from maskrt.devices import usable_cores
    from maskrt.export.onnx import export_onnx
    from maskrt.model.checkpoint import load_state_dict
    from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    size, k = args.canvas, args.detections
    ours_model, cfg = random_detector(
        "resnet50_fpn", size, seed=args.seed, max_detections=k, workload="worst"
    )

    # torchvision's own builder (without weights it uses BatchNorm2d, the faster eager kernel), with
    # our random weights; the same inference settings
    tv = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=cfg.num_classes,
        min_size=size,
        max_size=size,
        box_score_thresh=0.0,
        box_detections_per_img=k,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        box_nms_thresh=cfg.nms_threshold,
        rpn_nms_thresh=cfg.rpn_nms_threshold,
    ).eval()
    g = torch.Generator().manual_seed(args.seed)  # the image random_detector calibrated on
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=g)
    load_state_dict(tv, ours_model.state_dict(), "bench weights")
    loaded = SimpleNamespace(model=ours_model, config=cfg, sha256="0" * 64)

    result: dict = {
        "bench": "onnx_cpu",
        "machine": f"{_cpu_name()}, {usable_cores()} cores",
        "threads": threads,
        "torch": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "model": "maskrcnn_resnet50_fpn, random weights, score threshold 0",
        "canvas": size,
        "detections": k,
        "runs": args.runs,
    }
    with tempfile.TemporaryDirectory(prefix="maskrt-bench-") as tmp:
        started = time.perf_counter()
        onnx_path = export_onnx(loaded, Path(tmp) / "ours.onnx", max_batch=1)
        result["ours_export_s"] = round(time.perf_counter() - started, 1)
        backend = OnnxRuntimeBackend(onnx_path, device="cpu", max_batch=1, threads=threads)

        out = backend.infer(image)
        result["ours_detections"] = int(out.num_detections[0])
        result["ours"] = _timed(lambda: backend.infer(image), args.runs, args.warmup)

        def ours_paste():
            o = backend.infer(image)
            n = int(o.num_detections[0])
            return paste_masks_in_image(o.masks[0, :n, None], o.boxes[0, :n], (size, size))

        result["ours_paste"] = _timed(ours_paste, args.runs, 0)

        tv_input = [image[0].float() / 255.0]
        with torch.inference_mode():
            ref = tv(tv_input)[0]
            result["torchvision_detections"] = len(ref["boxes"])
            result["torchvision"] = _timed(lambda: tv(tv_input), args.runs, args.warmup)

        if args.skip_stock:
            result["torchvision_onnx"] = {"status": "skipped"}
        else:
            result["torchvision_onnx"] = _stock_onnx(
                tv, tv_input, Path(tmp), threads, args, ort, np, torch
            )

    base = result["torchvision"]["median_ms"]
    result["speedup_vs_torchvision"] = round(base / result["ours"]["median_ms"], 2)
    result["speedup_with_paste_vs_torchvision"] = round(base / result["ours_paste"]["median_ms"], 2)
    stock = result["torchvision_onnx"]
    if "median_ms" in stock:
        result["speedup_vs_torchvision_onnx"] = round(
            stock["median_ms"] / result["ours"]["median_ms"], 2
        )
    print(json.dumps(result))
    stock_cell = (
        f"{stock['median_ms']:.0f} ms"
        if "median_ms" in stock
        else f"not exportable ({stock.get('status')})"
    )
    print(
        f"| `python -m maskrt.bench.onnx_cpu --canvas {size} --runs {args.runs}` ({threads} threads) "
        f"| {result['ours']['median_ms']:.0f} ms | {result['ours_paste']['median_ms']:.0f} ms "
        f"| {base:.0f} ms | {stock_cell} | {result['speedup_vs_torchvision']}x |"
    )
    return 0


def _stock_onnx(tv, tv_input, tmp: Path, threads: int, args, ort, np, torch) -> dict:
    """torchvision's model through torch.onnx.export as it is: the dynamo exporter, then the
    TorchScript one; timed in ONNX Runtime if one of them works."""
    import contextlib
    import io
    import logging
    import warnings

    from maskrt.runtime.backends.onnxruntime import session_options

    attempts = []
    path = tmp / "torchvision.onnx"
    for name in ("torch", "torch.export", "torch._export", "torch.onnx", "torch.fx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the exporter dumps whole graphs
    for dynamo in (True, False):
        name = (
            "torch.onnx.export(dynamo=True)"
            if dynamo
            else "torch.onnx.export(dynamo=False) (TorchScript)"
        )
        started = time.perf_counter()
        try:
            with (
                warnings.catch_warnings(),
                torch.no_grad(),
                contextlib.redirect_stdout(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                kwargs = {"dynamo": dynamo, "opset_version": 18 if dynamo else 17}
                if not dynamo:
                    kwargs["do_constant_folding"] = True
                torch.onnx.export(tv, (tv_input,), str(path), input_names=["image"], **kwargs)
            attempts.append(
                {
                    "exporter": name,
                    "status": "ok",
                    "export_s": round(time.perf_counter() - started, 1),
                }
            )
            break
        except Exception as exc:  # report precisely why this torch cannot export it
            attempts.append(
                {
                    "exporter": name,
                    "status": "failed",
                    "error": _error(exc),
                    "where": traceback.extract_tb(exc.__traceback__)[-1].filename.split(
                        "site-packages/"
                    )[-1],
                }
            )
            path.unlink(missing_ok=True)
    result: dict = {"attempts": attempts}
    if not path.is_file():
        result["status"] = "both exporters failed"
        return result
    options = session_options(threads)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        feed = {session.get_inputs()[0].name: tv_input[0].numpy()}
        outputs = session.run(None, feed)
    except Exception as exc:
        result.update(status="exported, but ONNX Runtime cannot run it", error=_error(exc))
        return result
    result["status"] = "ok"
    result["detections"] = int(outputs[0].shape[0])
    result.update(_timed(lambda: session.run(None, feed), args.runs, args.warmup))
    return result


if __name__ == "__main__":
    sys.exit(main())
