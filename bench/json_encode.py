"""Benchmark: serialising a ``/predict`` answer, the standard library's ``json`` (as the server
wrote it before) against ``orjson`` (what it writes now), same answer, same process.

The answer is built like the server's: COCO RLE strings (the server's are byte-identical to
``pycocotools.mask.encode``, used here) of the shapes data set's masks enlarged to a 640x480
image, boxes, scores, labels and timings; once with 4 detections (the bundled model on a typical
image) and once with 100 (an R50-FPN with ``K = 100``). Prints the median time of each and the
ratio ``json / orjson``; both outputs are checked to parse to the same object.

    python -m maskrt.bench.json_encode [--runs 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def answer(detections: int, seed: int = 0) -> dict:
    """A ``/predict`` answer with ``detections`` masks on a 640x480 image."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from maskrt.model.shapes import SHAPES_CLASSES, generate

    rng = np.random.default_rng(seed)
    dets: list[dict] = []
    index = 0
    while len(dets) < detections:
        sample = generate(seed, index)
        index += 1
        for mask, label in zip(sample.masks, sample.labels):
            full = np.asarray(Image.fromarray(mask * 255).resize((640, 480))) > 127
            ys, xs = np.nonzero(full)
            if len(xs) == 0 or len(dets) == detections:
                continue
            rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
            dets.append(
                {
                    "box": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())],
                    "score": float(rng.random()),
                    "class_id": int(label),
                    "label": SHAPES_CLASSES[int(label)],
                    "mask": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
    return {
        "model": {"name": "shapes", "version": "5da77ec8b1d7", "backend": "onnxruntime"},
        "width": 640,
        "height": 480,
        "detections": dets,
        "timings_ms": {"queue": 1.2, "preprocess": 0.8, "inference": 20.5, "postprocess": 1.1},
    }


def stdlib(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def median_us(fn, data: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    import orjson

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args(argv)
    print("| detections | bytes | json (us) | orjson (us) | json / orjson |")
    print("| --- | --- | --- | --- | --- |")
    for count in (4, 100):
        data = answer(count)
        assert json.loads(stdlib(data)) == json.loads(orjson.dumps(data))
        ours, theirs = median_us(orjson.dumps, data, args.runs), median_us(stdlib, data, args.runs)
        print(
            f"| {count} | {len(orjson.dumps(data))} | {theirs:.1f} | {ours:.1f} | "
            f"{theirs / ours:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
