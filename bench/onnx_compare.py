"""Benchmark: several maskrt ONNX files of one model in ONNX Runtime, interleaved in one process.

Each file is opened by the onnxruntime backend (the server's session options); the same
letterboxed images of a data set go through each in turn (one batch of A, then the same batch of
B, ...), so every file sees the same background load. Prints the median milliseconds per batch of
each file and its speed relative to the first. Used for the lighter ``--mask-head detections``
graph against ``all``, and for ``--int8`` against float32:

    maskrt export onnx --mask-head all --out all.onnx
    maskrt export onnx --out light.onnx
    maskrt export onnx --int8 --calibration shapes:64:3 --out int8.onnx
    python -m maskrt.bench.onnx_compare all.onnx light.onnx int8.onnx --data shapes:20:2

``--spinning both`` opens every file twice, with ONNX Runtime's intra-op threads sleeping between
operators (the server's default) and spinning (``maskrt serve --inference-spinning``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="maskrt ONNX files of one model")
    parser.add_argument("--data", default="shapes:20:2", help="images (a data spec)")
    parser.add_argument("--batch", type=int, default=1, help="images per batch")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--spinning",
        choices=("off", "on", "both"),
        default="off",
        help="intra-op threads spin between operators (both: each file both ways)",
    )
    args = parser.parse_args(argv)

    import torch

    from maskrt.errors import MaskrtError
    from maskrt.model.coco import open_dataset
    from maskrt.model.letterbox import fill_colour, letterbox_batch
    from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    spins = {"off": [False], "on": [True], "both": [False, True]}[args.spinning]
    runs = [(f, spin) for f in args.files for spin in spins]
    backends = [
        OnnxRuntimeBackend(f, max_batch=args.batch, threads=args.threads, spinning=spin)
        for f, spin in runs
    ]
    info = backends[0].info
    if any((b.info.canvas, b.info.version) != (info.canvas, info.version) for b in backends):
        raise MaskrtError("the files are not exports of one model at one canvas")
    data = open_dataset(args.data)
    images = [
        torch.from_numpy(data.load_image(i)).permute(2, 0, 1).contiguous() for i in data.image_ids
    ]
    fill = fill_colour(info.image_mean)
    batches = [
        letterbox_batch(images[i : i + args.batch], info.canvas, fill)[0]
        for i in range(0, len(images) - args.batch + 1, args.batch)
    ]
    for backend in backends:  # warm-up
        backend.infer(batches[0])
    times: list[list[float]] = [[] for _ in backends]
    for _ in range(args.rounds):
        for batch in batches:
            for backend, spent in zip(backends, times):
                started = time.perf_counter()
                backend.infer(batch)
                spent.append((time.perf_counter() - started) * 1000)
    base = statistics.median(times[0])
    print(f"{len(batches)} batches of {args.batch} from {args.data}, {args.rounds} rounds")
    print("| file | precision | mask head | spinning | median ms per batch | speed vs first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (path, spin), backend, spent in zip(runs, backends, times):
        meta = backend.metadata
        median = statistics.median(spent)
        print(
            f"| {path.name} | {meta.get('precision', 'fp32')} | {meta.get('mask_head', 'all')} "
            f"| {'on' if spin else 'off'} | {median:.1f} | {base / median:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
