"""What the Open Inference Protocol costs against ``/predict``, on one running ``maskrt serve``.

1. The same image through ``tritonclient.http`` ``infer`` (binary tensor data in and out) and
   through multipart ``/predict``, at each concurrency (default 1 and 8): closed loops of
   ``--duration`` seconds, the two endpoints alternating for ``--rounds`` rounds so that both see
   the same background load; printed: p50/p95 latency and throughput of each, and the ratio of
   the p50s (goal: v2 within 10 % of ``/predict``).
2. A ~2 MB image (incompressible noise, PNG) sent to ``/v2`` as JSON with base64 and as binary
   tensor data, ``--big-requests`` interleaved pairs at concurrency 1; printed: both p50s and
   their ratio (the ``kserve`` package's own server is ~100x slower in JSON).

With ``--grpc [HOST:PORT]`` the same image also goes through ``tritonclient.grpc`` (raw tensors)
beside the two, at concurrency 1, 8 and 32 unless ``--concurrency`` says otherwise, and the big
image through gRPC beside binary HTTP; printed: gRPC's p50 at concurrency 1 and throughput at the
highest concurrency against ``/v2`` binary's, and the big image's p50s (goals: gRPC no slower).

Needs ``tritonclient[http]`` (``[grpc]`` for ``--grpc``; both in maskrt's ``dev`` extra)::

    python -m maskrt.bench.v2 --url http://127.0.0.1:8000 --duration 10 --grpc
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import io
import os
import statistics
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np

from maskrt.bench.chart import JSON_HELP, write_report
from maskrt.bench.load import default_image, percentile, require_loopback, wait_ready
from maskrt.errors import MaskrtError

GOAL_BINARY = 1.10  # v2 binary p50 / /predict p50
GOAL_JSON = 100.0  # v2 JSON p50 / v2 binary p50, for a 2 MB image
GOAL_GRPC = 1.0  # gRPC p50 / v2 binary p50 (concurrency 1, the 2 MB image); throughput: at least


def _triton(kind: str = "http"):
    """``tritonclient.http`` or ``tritonclient.grpc``."""
    try:
        return importlib.import_module(f"tritonclient.{kind}")
    except ImportError:
        raise MaskrtError(
            f"maskrt bench v2 needs tritonclient: pip install 'tritonclient[{kind}]'"
        ) from None


Call = Callable[[], None]


class Endpoints:
    """One client per thread (tritonclient's connections belong to the thread that made them)."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        model: str,
        timeout_s: float,
        grpc_address: str | None = None,
    ) -> None:
        self.url = url
        self.headers = headers
        self.model = model
        self.timeout_s = timeout_s
        self.grpc_address = grpc_address

    def predict(self, image: bytes) -> tuple[Call, Call]:
        client = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout_s, trust_env=False
        )

        def call() -> None:
            r = client.post("/predict", files={"image": ("image", image, "image/*")})
            if r.status_code != 200:
                raise MaskrtError(f"/predict: HTTP {r.status_code} {r.text[:200]}")

        return call, client.close

    def v2(self, image: bytes, binary: bool) -> tuple[Call, Call]:
        triton = _triton()
        client = triton.InferenceServerClient(
            self.url.removeprefix("http://"),
            connection_timeout=self.timeout_s,
            network_timeout=self.timeout_s,
        )
        tensor = triton.InferInput("image", [1], "BYTES")
        element = image if binary else base64.b64encode(image)
        tensor.set_data_from_numpy(np.array([element], dtype=np.object_), binary_data=binary)
        outputs = None
        if not binary:
            names = ("num_detections", "boxes", "scores", "class_ids", "labels", "masks")
            outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in names]

        headers = dict(self.headers)
        if not binary:  # tritonclient sends JSON untyped, which /v2 refuses (no CORS preflight)
            headers["Content-Type"] = "application/json"

        def call() -> None:
            client.infer(self.model, [tensor], outputs=outputs, headers=dict(headers))

        return call, client.close

    def grpc(self, image: bytes) -> tuple[Call, Call]:
        """``tritonclient.grpc``'s ``infer``: raw tensors in and out."""
        grpcclient = _triton("grpc")
        assert self.grpc_address is not None
        client = grpcclient.InferenceServerClient(self.grpc_address)
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
        metadata = {k.lower(): v for k, v in self.headers.items()}

        def call() -> None:
            client.infer(self.model, [tensor], headers=metadata, client_timeout=self.timeout_s)

        return call, client.close


def closed_loop(make: Callable[[], tuple[Call, Call]], concurrency: int, seconds: float) -> list:
    """Latencies (s) of ``concurrency`` threads calling in a loop for ``seconds``."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def worker() -> None:
        call, close = make()
        try:
            call()  # connect and warm up, unmeasured
            start.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                call()
                with lock:
                    latencies.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
            start.abort()
        finally:
            close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed: joined below
        start.wait()
    for t in threads:
        t.join()
    if errors:
        raise MaskrtError(f"a request failed: {errors[0]}")
    return latencies


def level(concurrency: int, latencies: list[float], seconds: float) -> dict[str, float]:
    """One route at one concurrency, in the fields of ``bench load``'s levels (for the chart)."""
    ms = [t * 1000 for t in latencies]
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "seconds": seconds,
        "throughput": len(ms) / seconds,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
    }


def summary(lv: dict[str, float]) -> str:
    return (
        f"p50 {lv['p50_ms']:8.1f} ms  p95 {lv['p95_ms']:8.1f} ms  "
        f"{lv['throughput']:7.1f} req/s  ({lv['requests']} requests)"
    )


def noise_png(size: int, seed: int = 0) -> bytes:
    """An incompressible RGB PNG of about ``size`` bytes."""
    from PIL import Image

    side = max(1, int((size / 3) ** 0.5))
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="maskrt bench v2",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server (loopback only)")
    p.add_argument(
        "--concurrency", help="comma-separated client counts (default: 1,8; with --grpc 1,8,32)"
    )
    p.add_argument(
        "--grpc",
        nargs="?",
        const="127.0.0.1:8001",
        help="also time gRPC at this address (HOST:PORT, default 127.0.0.1:8001)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint and round")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two endpoints")
    p.add_argument("--big-bytes", type=int, default=2_000_000, help="size of the big image")
    p.add_argument("--big-requests", type=int, default=10, help="JSON/binary pairs of it")
    p.add_argument(
        "--api-key", default=os.environ.get("MASKRT_API_KEY"), help="API key (env MASKRT_API_KEY)"
    )
    p.add_argument("--request-timeout", type=float, default=120.0, help="client timeout (s)")
    p.add_argument("--json", help=JSON_HELP)
    args = p.parse_args(argv)
    url = args.url.rstrip("/")
    require_loopback(url)
    if args.grpc is not None:
        require_loopback(f"http://{args.grpc}")
    concurrency = args.concurrency or ("1,8,32" if args.grpc else "1,8")
    levels = sorted({int(c) for c in concurrency.split(",") if c.strip()})
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = wait_ready(url, headers, 300)
    endpoints = Endpoints(url, headers, model["name"], args.request_timeout, args.grpc)
    image, _ = default_image()
    print(
        f"server {url}: model {model['name']} on {model['backend']}/{model['device']}, "
        f"max batch {model['max_batch']}; image {len(image)} bytes; "
        f"{args.rounds} x {args.duration:g} s per endpoint and level",
        flush=True,
    )
    routes: dict[str, list[dict[str, float]]] = {}
    makers = {
        "/predict": lambda: endpoints.predict(image),
        "v2 binary": lambda: endpoints.v2(image, binary=True),
    }
    if args.grpc:
        makers["gRPC"] = lambda: endpoints.grpc(image)
    total = args.rounds * args.duration
    for c in levels:
        samples: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.rounds):
            for name, make in makers.items():
                samples[name] += closed_loop(make, c, args.duration)
        print(f"concurrency {c}:")
        for name, latencies in samples.items():
            routes.setdefault(name, []).append(level(c, latencies, total))
            print(f"  {name:<10} {summary(routes[name][-1])}")
        p50 = {name: statistics.median(latencies) for name, latencies in samples.items()}
        _goal("v2 binary / /predict p50", p50["v2 binary"] / p50["/predict"], GOAL_BINARY)
        if args.grpc and c == levels[0]:
            _goal("gRPC / v2 binary p50", p50["gRPC"] / p50["v2 binary"], GOAL_GRPC)
        if args.grpc and c == levels[-1]:
            done = len(samples["v2 binary"]) / len(samples["gRPC"])  # same seconds each
            _goal("v2 binary / gRPC throughput", done, GOAL_GRPC)

    big = noise_png(args.big_bytes)
    big_makers = {
        "binary": lambda: endpoints.v2(big, binary=True),
        "JSON/base64": lambda: endpoints.v2(big, binary=False),
    }
    if args.grpc:
        big_makers["gRPC"] = lambda: endpoints.grpc(big)
    calls = {name: make() for name, make in big_makers.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for call, _ in calls.values():  # warm up
            call()
        for _ in range(args.big_requests):
            for name, (call, _) in calls.items():
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    finally:
        for _, close in calls.values():
            close()
    big_p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"{len(big) / 1e6:.2f} MB image at concurrency 1, {args.big_requests} rounds:")
    print("  " + ", ".join(f"{name} p50 {ms:.1f} ms" for name, ms in big_p50.items()))
    ratio = big_p50["JSON/base64"] / big_p50["binary"]
    verdict = "met" if ratio < GOAL_JSON else "NOT met"
    print(f"  JSON / binary p50: {ratio:.3f} (goal < {GOAL_JSON:.0f}: {verdict})")
    if args.grpc:
        _goal("gRPC / binary p50", big_p50["gRPC"] / big_p50["binary"], GOAL_GRPC)
    if args.json:
        big_image = {"bytes": len(big), "requests": args.big_requests, "p50_ms": big_p50}
        write_report(
            {"url": url, "model": model, "routes": routes, "big_image": big_image},
            args.json,
            f"maskrt bench v2: {model['name']} on {model['backend']}/{model['device']}",
        )
    return 0


def _goal(what: str, ratio: float, goal: float) -> None:
    verdict = "met" if ratio <= goal else "NOT met"
    print(f"  {what}: {ratio:.3f} (goal <= {goal:.2f}: {verdict})")


if __name__ == "__main__":
    raise SystemExit(main())
