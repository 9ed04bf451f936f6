"""``maskrt bench peers``: ``maskrt serve`` against what users would write themselves.

Starts, one at a time on loopback, ``maskrt serve`` and the peers of
:mod:`maskrt.bench.peer_servers` (a naive FastAPI server, one request at a time; LitServe with
dynamic batching), all on the same checkpoint and the same image scale, and sends each the same
image as the same multipart upload with the load generator of :mod:`maskrt.bench.load`: per
concurrency level a warm-up, then a closed loop of ``--duration`` seconds. Printed per server and
level: throughput, p50, p95, errors, the resident memory of the server's process tree (peak seen
at the end of each level), then maskrt's throughput and p50 as ratios to each peer's.

- ``--model bundled`` (default): the shipped shapes model; the peers' torchvision transform keeps
  the config's ``min_size = max_size = canvas``, maskrt letterboxes to the same canvas.
- ``--model r50``: torchvision's ResNet-50 FPN layout with random weights
  (:func:`maskrt.bench.random_model.random_detector`): ``--workload realistic`` (default) does a
  trained COCO detector's work at threshold 0.05 (a few thousand candidates before NMS, 30-60
  detections after), ``--workload worst`` has threshold 0 and ``K`` detections with masks in every
  image; ``--canvas`` (default 640) for maskrt's export and for the peers' ``min_size = max_size``.

``--int8`` has maskrt serve its export quantized to int8 (calibrated on ``--calibration``);
``--maskrt-model FILE`` serves that ONNX instead of maskrt's own export. ``--device cuda`` runs
every server on the GPU; ``--backend`` picks maskrt's (``torch`` and ``tensorrt`` serve the
checkpoint itself, ``onnxruntime`` maskrt's ONNX export).
Only one server runs at a time: an idle server still costs CPU on a small machine.

    maskrt bench peers --concurrency 1,4,16 --duration 20
    maskrt bench peers --model r50 --canvas 640 --concurrency 1,4 --duration 30 --max-batch 4
    maskrt bench peers --model r50 --canvas 800 --device cuda --backend torch --servers maskrt,naive
    maskrt bench peers --model r50 --workload worst --canvas 800 --device cuda --backend torch
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from maskrt.bench.chart import JSON_HELP, write_report
from maskrt.bench.load import LevelResult, LoadClient
from maskrt.bench.random_model import WORKLOADS
from maskrt.errors import MaskrtError

SERVERS = ("maskrt", "naive", "litserve")
READY_PATH = {"maskrt": "/readyz", "naive": "/health", "litserve": "/health"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (LitServe runs workers in children)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
    return total


def peers_image() -> tuple[bytes, str]:
    """:func:`maskrt.bench.random_model.sample_image` (four shapes at 640x480) as a JPEG."""
    from PIL import Image

    from maskrt.bench.random_model import sample_image

    buf = io.BytesIO()
    Image.fromarray(sample_image()).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "image/jpeg"


@dataclasses.dataclass
class Prepared:
    checkpoint: str
    served: str  # what maskrt serves: its ONNX for onnxruntime, else the checkpoint
    canvas: int | None  # the peers' min_size = max_size (None: the config's)
    score_threshold: float
    describe: str


def prepare(args: argparse.Namespace, workdir: Path) -> Prepared:
    """The checkpoint every server loads and the ONNX ``maskrt serve`` serves."""
    from maskrt.export.onnx import export_onnx
    from maskrt.model.checkpoint import default_checkpoint, load_checkpoint

    if args.model == "r50":
        from maskrt.bench.random_model import save_random_checkpoint

        canvas = args.canvas or 640
        checkpoint = save_random_checkpoint(
            workdir / "r50.pt", "resnet50_fpn", canvas, seed=args.seed, workload=args.workload
        )
        threshold = load_checkpoint(checkpoint).config.score_threshold
        if args.score_threshold is not None:
            threshold = args.score_threshold
        describe = f"R50-FPN, random weights ({args.workload} workload), canvas {canvas}"
    else:
        checkpoint, canvas = default_checkpoint(), args.canvas
        threshold = 0.5 if args.score_threshold is None else args.score_threshold
        describe = "bundled shapes model" + (f", canvas {canvas}" if canvas else "")
    onnx = args.maskrt_model
    if onnx is None and args.backend == "onnxruntime":
        print(f"exporting the onnxruntime-target ONNX of {describe} ...", flush=True)
        onnx = export_onnx(
            load_checkpoint(checkpoint),
            workdir / "model.onnx",
            max_batch=args.max_batch,
            canvas=canvas,
            int8_calibration=args.calibration if args.int8 else None,
        )
        describe += ", maskrt int8" if args.int8 else ""
    describe += f"; on {args.device}, maskrt's backend {args.backend}"
    model = str(onnx) if args.backend == "onnxruntime" else str(checkpoint)
    return Prepared(str(checkpoint), model, canvas, threshold, describe)


def command(server: str, port: int, prepared: Prepared, args: argparse.Namespace) -> list[str]:
    if server == "maskrt":
        return [
            *(sys.executable, "-m", "maskrt", "serve", "--model", prepared.served),
            *("--backend", args.backend, "--device", args.device, "--port", str(port)),
            *("--max-batch", str(args.max_batch), "--log-level", "warning"),
            *("--request-timeout-s", str(args.request_timeout)),
            *("--max-queue", str(max(64, 2 * max(args.levels)))),
            *shlex.split(args.serve_args),
        ]
    return [
        *(sys.executable, "-m", "maskrt.bench.peer_servers", server, "--port", str(port)),
        *("--model", prepared.checkpoint, "--score-threshold", str(prepared.score_threshold)),
        *(("--canvas", str(prepared.canvas)) if prepared.canvas else ()),
        *("--max-batch", str(args.peer_batch), "--device", args.device),
    ]


def wait_ready(url: str, path: str, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Poll ``path`` until it answers 200; the log's tail if the server exits or never does."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise MaskrtError(f"{url}: server exited ({process.returncode}):\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(path).status_code == 200:
                    return
            time.sleep(0.5)
    raise MaskrtError(f"{url}: not ready within {timeout_s:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclasses.dataclass
class ServerResult:
    server: str
    levels: list[LevelResult]
    rss_mb: float


def measure(
    server: str,
    prepared: Prepared,
    args: argparse.Namespace,
    image: tuple[bytes, str],
    workdir: Path,
) -> ServerResult:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"{server}.log"
    env = {**os.environ, "MASKRT_LOG_FORMAT": "text"}
    with log.open("w") as out:
        process = subprocess.Popen(
            command(server, port, prepared, args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        started = time.perf_counter()
        wait_ready(url, READY_PATH[server], process, args.ready_timeout, log)
        print(f"{server}: ready in {time.perf_counter() - started:.1f} s", flush=True)
        client = LoadClient(
            url,
            *image,
            {"score_threshold": str(prepared.score_threshold)},
            {},
            args.request_timeout,
            scrape_metrics=server == "maskrt",
        )
        levels, rss = [], 0
        for c in args.levels:
            result = asyncio.run(client.level(c, args.duration, args.warmup))
            rss = max(rss, tree_rss(process.pid))
            levels.append(result)
            errors = sum(result.errors.values())
            print(
                f"  c={c:<3} {result.throughput:7.2f} req/s  p50 {result.p50_ms:8.1f} ms  "
                f"p95 {result.p95_ms:8.1f} ms  errors {errors}  RSS {rss / 2**20:.0f} MB",
                flush=True,
            )
            if result.errors:
                print(f"        errors: {result.errors}", flush=True)
        return ServerResult(server, levels, rss / 2**20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def table(results: list[ServerResult]) -> str:
    """A markdown table: one row per level, one column group per server, then maskrt's ratios."""
    ours = next((r for r in results if r.server == "maskrt"), None)
    peers = [r for r in results if r.server != "maskrt"]
    head = ["concurrency"] + [f"{r.server}: req/s, p50/p95 ms, errors" for r in results]
    if ours:
        head += [f"maskrt/{p.server}: req/s, p50" for p in peers]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for i, level in enumerate(results[0].levels):
        cells = [str(level.concurrency)]
        for r in results:
            lv = r.levels[i]
            cells.append(
                f"{lv.throughput:.2f}, {lv.p50_ms:.0f}/{lv.p95_ms:.0f}, {sum(lv.errors.values())}"
            )
        if ours:
            mine = ours.levels[i]
            for p in peers:
                theirs = p.levels[i]
                cells.append(
                    f"{_ratio(mine.throughput, theirs.throughput)}, "
                    f"{_ratio(mine.p50_ms, theirs.p50_ms)}"
                )
        rows.append("| " + " | ".join(cells) + " |")
    rows.append(
        "| RSS (MB) | "
        + " | ".join(f"{r.rss_mb:.0f}" for r in results)
        + " |" * (len(head) - len(results))
    )
    return "\n".join(rows)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", choices=("bundled", "r50"), default="bundled")
    parser.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="realistic",
        help="r50: a trained detector's work at threshold 0.05, or K detections at threshold 0",
    )
    parser.add_argument(
        "--canvas", type=int, help="canvas side (r50 default 640; bundled: the config's)"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="which, in this order")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level")
    parser.add_argument("--max-batch", type=int, default=8, help="maskrt's max batch")
    parser.add_argument("--peer-batch", type=int, default=8, help="LitServe's max_batch_size")
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="every server's (default: 0.5; r50: 0.05, its worst workload 0)",
    )
    parser.add_argument("--device", default="cpu", help="every server's device (cpu, cuda, cuda:N)")
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "torch", "tensorrt"),
        default="onnxruntime",
        help="maskrt's backend",
    )
    parser.add_argument("--maskrt-model", help="serve this ONNX instead of exporting one")
    parser.add_argument(
        "--serve-args",
        default="",
        help="more `maskrt serve` flags, e.g. '--inference-threads 1 --max-delay-ms 10'",
    )
    parser.add_argument(
        "--int8", action="store_true", help="maskrt serves its export quantized to int8"
    )
    parser.add_argument(
        "--calibration", default="shapes:32:3", help="the int8 calibration images (a data spec)"
    )
    parser.add_argument("--image", help="image file to send (default: a 640x480 shapes JPEG)")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help=JSON_HELP)
    args = parser.parse_args(argv)
    args.levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown or not servers:
        raise MaskrtError(f"--servers: known servers are {', '.join(SERVERS)}")
    if not args.levels or min(args.levels) < 1:
        raise MaskrtError("--concurrency: a comma-separated list of positive integers")
    if args.backend != "onnxruntime" and (args.int8 or args.maskrt_model):
        raise MaskrtError("--int8 and --maskrt-model are ONNX: they need --backend onnxruntime")
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise MaskrtError(f"--image {path}: no such file")
        image = (path.read_bytes(), "image/png" if path.suffix.lower() == ".png" else "image/jpeg")
    else:
        image = peers_image()

    with tempfile.TemporaryDirectory(prefix="maskrt-peers-") as tmp:
        prepared = prepare(args, Path(tmp))
        print(
            f"{prepared.describe}; {len(image[0])}-byte image; score threshold "
            f"{prepared.score_threshold:g}; {args.duration:g} s per level after "
            f"{args.warmup:g} s warm-up; servers one at a time: {', '.join(servers)}",
            flush=True,
        )
        results = []
        for server in servers:
            print(f"{server}: starting", flush=True)
            results.append(measure(server, prepared, args, image, Path(tmp)))
    print(table(results))
    if args.json:
        write_report(
            {"model": prepared.describe, "results": [dataclasses.asdict(r) for r in results]},
            args.json,
            f"maskrt bench peers: {prepared.describe}",
        )
    return 0 if all(lv.ok for r in results for lv in r.levels) else 1


if __name__ == "__main__":
    raise SystemExit(main())
