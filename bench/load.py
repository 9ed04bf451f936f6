"""Load generator for a running ``maskrt serve`` (loopback only).

For each concurrency level, that many clients post the same image to ``/predict`` in a closed loop
for ``--duration`` seconds; printed per level: requests, errors, throughput, p50/p95/p99 latency
and the batch sizes the server formed meanwhile (deltas of its ``maskrt_batch_size`` histogram).

Then the server's overhead at concurrency 1: the same backend is opened in this process (same
model, backend and device as the server reports on ``/v1/model``) and the same image goes through
the same pipeline (decode, letterbox, infer, post-process with the same parameters) without HTTP,
interleaved with single HTTP requests (one, then the other, never both at once) so that both see
the same background load. ``overhead = (p50 over HTTP - p50 direct) / p50 direct``; the goal is
<= 15 %.

    maskrt bench load --url http://127.0.0.1:8000 --concurrency 1,4,16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import ipaddress
import math
import os
import re
import socket
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from maskrt.bench.chart import JSON_HELP, write_report
from maskrt.errors import MaskrtError

OVERHEAD_GOAL = 0.15
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')  # one label of a parse_metrics key


# ---------------------------------------------------------------------------------------------
# Helpers


def require_loopback(url: str) -> None:
    """Refuse any URL whose host is not this machine's loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MaskrtError(f"--url {url!r}: expected http://HOST:PORT")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise MaskrtError(f"--url {url!r}: cannot resolve {parts.hostname!r} ({exc})") from None
    addresses = {str(info[4][0]) for info in infos}
    if not addresses or not all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    ):
        raise MaskrtError(
            f"--url {url!r}: the load generator only targets this machine's "
            f"loopback (127.0.0.1, ::1, localhost); {parts.hostname} is "
            f"{', '.join(sorted(addresses))}"
        )


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def default_image() -> tuple[bytes, str]:
    """A shapes sample as a JPEG (what the shipped model was trained on)."""
    from PIL import Image

    try:
        from maskrt.model.shapes import generate

        array = generate(7, 3).image
        img = Image.fromarray(array)
    except ImportError:  # pragma: no cover - the shapes module ships with maskrt
        img = Image.new("RGB", (256, 192), (40, 120, 200))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "image/jpeg"


def parse_metrics(text: str) -> dict[str, float]:
    """``{sample name with labels: value}`` of a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def sample_labels(key: str, name: str) -> dict[str, str]:
    """The labels of a :func:`parse_metrics` key when it is a sample of ``name`` (else none)."""
    sample, _, labels = key.partition("{")
    return dict(_LABEL.findall(labels)) if sample == name else {}


def sample_sum(values: dict[str, float], name: str, /, **labels: str) -> float:
    """The sum of ``name``'s samples in :func:`parse_metrics`' ``values`` whose labels include
    ``labels``: over the labels not given (every model and version, say)."""
    return sum(
        value
        for key, value in values.items()
        if key.partition("{")[0] == name and labels.items() <= sample_labels(key, name).items()
    )


def batch_sizes(before: dict[str, float], after: dict[str, float]) -> dict[str, object]:
    """Batches formed between two scrapes: count, mean size, and how many of each size
    (from the cumulative ``le`` buckets)."""

    def delta(name: str, **labels: str) -> float:  # every model version's together
        return sample_sum(after, name, **labels) - sample_sum(before, name, **labels)

    count = delta("maskrt_batch_size_count")
    total = delta("maskrt_batch_size_sum")
    bounds = {
        labels["le"]
        for key in after
        for labels in [sample_labels(key, "maskrt_batch_size_bucket")]
        if "le" in labels
    }
    buckets = sorted((float(le), delta("maskrt_batch_size_bucket", le=le)) for le in bounds)
    sizes: dict[str, int] = {}
    previous_le, previous_cum = 0.0, 0.0
    for le, cum in buckets:
        n = round(cum - previous_cum)
        if n:
            label = (
                (
                    f"{int(le)}"
                    if le - previous_le <= 1 or math.isinf(le)
                    else f"{int(previous_le) + 1}-{int(le)}"
                )
                if not math.isinf(le)
                else f">{int(previous_le)}"
            )
            sizes[label] = n
        previous_le, previous_cum = le, cum
    return {
        "batches": int(count),
        "images": int(total),
        "mean": (total / count) if count else math.nan,
        "sizes": sizes,
    }


# ---------------------------------------------------------------------------------------------
# HTTP load


@dataclasses.dataclass
class LevelResult:
    concurrency: int
    seconds: float
    requests: int
    ok: int
    errors: dict[str, int]
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    batch: dict

    def row(self) -> str:
        sizes = " ".join(f"{k}:{v}" for k, v in self.batch["sizes"].items()) or "-"
        errors = sum(self.errors.values())
        return (
            f"{self.concurrency:>5} {self.requests:>8} {errors:>6} {self.throughput:>9.1f} "
            f"{self.p50_ms:>9.1f} {self.p95_ms:>9.1f} {self.p99_ms:>9.1f} "
            f"{self.batch['mean']:>6.2f}  {sizes}"
        )


HEADER = (
    f"{'conc':>5} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>9} {'p95 ms':>9} "
    f"{'p99 ms':>9} {'batch':>6}  batch sizes (size:count)"
)


class LoadClient:
    def __init__(
        self,
        url: str,
        image: bytes,
        content_type: str,
        params: dict,
        headers: dict,
        timeout_s: float,
        *,
        scrape_metrics: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.scrape_metrics = scrape_metrics  # False for servers without maskrt's /metrics
        self.image = image
        self.content_type = content_type
        self.params = params
        self.headers = headers
        self.timeout_s = timeout_s

    def client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=self.timeout_s,
            limits=limits,
            headers=self.headers,
            trust_env=False,
        )

    async def one(self, client: httpx.AsyncClient) -> tuple[float, int | str]:
        files = {"image": ("image", self.image, self.content_type)}
        started = time.perf_counter()
        try:
            r = await client.post("/predict", files=files, params=self.params)
            await r.aread()
            status: int | str = r.status_code
            if status == 503 and "retry-after" not in r.headers:
                status = "503 without Retry-After"
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        return time.perf_counter() - started, status

    async def metrics(self, client: httpx.AsyncClient) -> dict[str, float]:
        if not self.scrape_metrics:
            return {}
        r = await client.get("/metrics")
        r.raise_for_status()
        return parse_metrics(r.text)

    async def level(self, concurrency: int, duration_s: float, warmup_s: float) -> LevelResult:
        async with self.client(concurrency + 1) as client:
            if warmup_s > 0:  # open the connections, let the server settle
                await self.closed_loop(client, concurrency, warmup_s)
            before = await self.metrics(client)
            started = time.perf_counter()
            samples = await self.closed_loop(client, concurrency, duration_s)
            seconds = time.perf_counter() - started
            after = await self.metrics(client)
        latencies = [t for t, s in samples if s == 200]
        errors: dict[str, int] = {}
        for _, s in samples:
            if s != 200:
                errors[str(s)] = errors.get(str(s), 0) + 1
        ms = [t * 1000 for t in latencies]
        return LevelResult(
            concurrency,
            seconds,
            len(samples),
            len(latencies),
            errors,
            len(latencies) / seconds if seconds > 0 else math.nan,
            percentile(ms, 50),
            percentile(ms, 95),
            percentile(ms, 99),
            statistics.fmean(ms) if ms else math.nan,
            batch_sizes(before, after),
        )

    async def closed_loop(
        self, client: httpx.AsyncClient, concurrency: int, duration_s: float
    ) -> list[tuple[float, int | str]]:
        deadline = time.perf_counter() + duration_s
        samples: list[tuple[float, int | str]] = []

        async def worker() -> None:
            while time.perf_counter() < deadline:
                samples.append(await self.one(client))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples


def wait_ready(url: str, headers: dict, timeout_s: float) -> dict:
    """Wait for ``/readyz``; return ``/v1/model``."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=10, headers=headers, trust_env=False) as client:
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = client.get("/readyz")
                if r.status_code == 200:
                    info = client.get("/v1/model")
                    if info.status_code != 200:
                        raise MaskrtError(
                            f"GET /v1/model: HTTP {info.status_code} {info.text[:200]}"
                        )
                    return info.json()
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(0.5)
    raise MaskrtError(f"{url} did not turn ready within {timeout_s:.0f} s ({last})")


# ---------------------------------------------------------------------------------------------
# Direct (in-process) reference


@dataclasses.dataclass
class OverheadResult:
    """Interleaved pairs: one request over HTTP, then the same work in-process, ``pairs`` times."""

    pairs: int
    http_p50_ms: float
    http_p95_ms: float
    direct_p50_ms: float
    direct_p95_ms: float
    overhead: float  # (http p50 - direct p50) / direct p50
    paired_overhead: float  # median over pairs of (http - direct) / direct
    backend: str
    device: str
    version: str


def overhead(
    client: LoadClient, image: bytes, settings, score_threshold: float, pairs: int, warmup: int = 3
) -> OverheadResult:
    """The server's overhead at concurrency 1 against the same pipeline without HTTP.

    The same backend is opened in this process; then each pair runs one HTTP request (the server
    otherwise idle) and right after it the same per-request work here (decode, letterbox, infer,
    post-process with the same parameters), never both at once. Interleaving makes both sides see
    the same background load, which matters on a shared machine."""
    from maskrt.runtime.backends import open_backend
    from maskrt.runtime.pipeline import Pipeline, PostOptions

    pipeline = Pipeline(open_backend(settings))
    pipeline.warmup([1])
    options = PostOptions(score_threshold=score_threshold)

    def direct_once() -> float:
        started = time.perf_counter()
        decoded = pipeline.decode(image, max_pixels=settings.max_image_pixels)
        pipeline.run_batch([decoded.tensor], options)
        return time.perf_counter() - started

    async def pairs_() -> list[tuple[float, float]]:
        out = []
        async with client.client(1) as http:
            for i in range(warmup + pairs):
                t_http, status = await client.one(http)
                if status != 200:
                    raise MaskrtError(f"overhead run: HTTP {status}")
                t_direct = direct_once()
                if i >= warmup:
                    out.append((t_http * 1000, t_direct * 1000))
        return out

    samples = asyncio.run(pairs_())
    http_ms = [h for h, _ in samples]
    direct_ms = [d for _, d in samples]
    h50, d50 = percentile(http_ms, 50), percentile(direct_ms, 50)
    paired = statistics.median((h - d) / d for h, d in samples)
    return OverheadResult(
        len(samples),
        h50,
        percentile(http_ms, 95),
        d50,
        percentile(direct_ms, 95),
        (h50 - d50) / d50,
        paired,
        pipeline.backend.name,
        str(pipeline.backend.device),
        pipeline.backend.info.version,
    )


# ---------------------------------------------------------------------------------------------
# Entry point


def run(args) -> int:
    url = args.url.rstrip("/")
    require_loopback(url)
    levels = sorted({int(c) for c in str(args.concurrency).split(",") if c.strip()})
    if not levels or min(levels) < 1:
        raise MaskrtError("--concurrency: a comma-separated list of positive integers")
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise MaskrtError(f"--image {path}: no such file")
        image = path.read_bytes()
        content_type = {".png": "image/png", ".webp": "image/webp"}.get(
            path.suffix.lower(), "image/jpeg"
        )
    else:
        image, content_type = default_image()
    api_key = args.api_key or os.environ.get("MASKRT_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    params = {"score_threshold": str(args.score_threshold)}

    model = wait_ready(url, headers, args.ready_timeout)
    print(
        f"server {url}: model {model['name']} {model['version']} on {model['backend']}/"
        f"{model['device']}, max batch {model['max_batch']}; image {len(image)} bytes; "
        f"{args.duration:g} s per level",
        flush=True,
    )
    client = LoadClient(url, image, content_type, params, headers, args.request_timeout)
    results: list[LevelResult] = []
    print(HEADER, flush=True)
    for c in levels:
        result = asyncio.run(client.level(c, args.duration, args.warmup))
        results.append(result)
        print(result.row(), flush=True)
        if result.errors:
            print(f"      errors: {result.errors}", flush=True)

    report: dict = {"url": url, "model": model, "levels": [dataclasses.asdict(r) for r in results]}
    if args.direct:
        from maskrt.runtime.options import MODEL_OPTIONS, RuntimeOptions, from_flags

        settings = from_flags(
            args,
            RuntimeOptions,
            ("model", *MODEL_OPTIONS),
            backend=args.backend or model["backend"],
            device=args.device or model["device"],
            max_batch=max(1, int(model["max_batch"])),
        )
        print(
            f"overhead at concurrency 1: opening {settings.backend} on {settings.device} in this "
            f"process, then {args.direct_runs} interleaved pairs (one request over HTTP, the "
            f"same pipeline call here) ...",
            flush=True,
        )
        o = overhead(client, image, settings, args.score_threshold, args.direct_runs)
        same = (o.backend, o.version) == (model["backend"], model["version"])
        verdict = "met" if o.overhead <= OVERHEAD_GOAL else "NOT met"
        print(f"  over HTTP: p50 {o.http_p50_ms:.1f} ms, p95 {o.http_p95_ms:.1f} ms")
        print(
            f"  direct ({o.backend}/{o.device}): p50 {o.direct_p50_ms:.1f} ms, "
            f"p95 {o.direct_p95_ms:.1f} ms"
        )
        print(
            f"  server overhead: {o.overhead * 100:+.1f} % of the direct p50 "
            f"({o.http_p50_ms - o.direct_p50_ms:+.1f} ms; median of the pairs "
            f"{o.paired_overhead * 100:+.1f} %); goal <= {OVERHEAD_GOAL * 100:.0f} %: {verdict}"
        )
        if not same:
            print(
                f"warning: the server runs {model['backend']} {model['version']}, this process "
                f"{o.backend} {o.version}: pass --model/--backend/--device to match it",
                file=sys.stderr,
            )
        report["overhead_c1"] = dataclasses.asdict(o)
        report["same_model"] = same
    if args.json:
        write_report(
            report,
            args.json,
            f"maskrt bench load: {model['name']} on {model['backend']}/{model['device']}",
        )
    return 0 if all(r.ok for r in results) else 1


def add_arguments(p) -> None:
    from maskrt.runtime.options import MODEL_OPTIONS, add_flags

    p.add_argument("--url", default="http://127.0.0.1:8000", help="server (loopback only)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    p.add_argument("--image", help="image file to send (default: a shapes sample as JPEG)")
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="sent with every request and used by the direct run",
    )
    p.add_argument("--api-key", help="API key (default: env MASKRT_API_KEY)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="client timeout (s)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="wait this long for /readyz")
    p.add_argument(
        "--direct",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the same pipeline in this process (--no-direct skips it)",
    )
    p.add_argument(
        "--direct-runs",
        type=int,
        default=30,
        help="interleaved HTTP/direct pairs of the overhead measurement",
    )
    p.add_argument(
        "--model",
        help="model of the direct run (default: the server's default, i.e. "
        "MASKRT_MODEL or the bundled one)",
    )
    add_flags(p, MODEL_OPTIONS)  # as the server was told them
    p.add_argument("--backend", help="backend of the direct run (default: the server's)")
    p.add_argument("--device", help="device of the direct run (default: the server's)")
    p.add_argument("--json", help=JSON_HELP)
