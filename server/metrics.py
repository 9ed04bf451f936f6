"""Prometheus metrics, named as DESIGN.md fixes them (prefix ``maskrt_``, base units).

Each app owns a :class:`Metrics` on its own ``CollectorRegistry`` (so several apps can live in one
process, as in tests); ``GET /metrics`` renders that registry, which also carries the process,
platform and garbage-collector collectors of ``prometheus_client``.

Buckets: the stage and request latencies of this server range from ~0.1 ms (post-processing of an
image without detections, a health probe) to tens of seconds (a big batch on a CPU under load,
a request queued until its timeout), so the latency buckets run from 100 us to 60 s, about three
per decade. Batch sizes get one bucket per size up to 16, then a geometric series up to
``max_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    60.0,
)


def batch_size_buckets(max_batch: int) -> tuple[float, ...]:
    """1, 2, ..., 16, then 24, 32, 48, 64, ... and ``max_batch`` itself."""
    sizes = set(range(1, min(max_batch, 16) + 1))
    step = 16
    while step < max_batch:
        sizes.update(s for s in (step * 3 // 2, step * 2) if s <= max_batch)
        step *= 2
    sizes.add(max_batch)
    return tuple(float(s) for s in sorted(sizes))


class Metrics:
    """All ``maskrt_*`` metrics of one server.

    ``gpu_device``: a CUDA device string; only then ``maskrt_gpu_memory_used_bytes`` exists
    (memory in use on that GPU as the driver reports it, all processes and allocators included).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        max_batch: int = 8,
        gpu_device: str | None = None,
        process: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)

        self.request_duration = Histogram(
            "maskrt_request_duration_seconds",
            "HTTP request latency, arrival to response",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "maskrt_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.queue_wait = Histogram(
            "maskrt_queue_wait_seconds",
            "time an image waits in the batch queue",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess = Histogram(
            "maskrt_preprocess_duration_seconds",
            "batch letterboxing on the backend's device",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "maskrt_inference_duration_seconds",
            "deploy graph run of one batch",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess = Histogram(
            "maskrt_postprocess_duration_seconds",
            "post-processing (paste, RLE) of one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "maskrt_decode_duration_seconds",
            "decoding of one uploaded image, by decoder (nvjpeg, pillow)",
            ["decoder"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "maskrt_batch_size",
            "images per inference batch",
            buckets=batch_size_buckets(max_batch),
            registry=r,
        )
        self.images = Counter("maskrt_images", "images inferred", registry=r)
        self.detections = Counter("maskrt_detections", "detections returned", registry=r)
        self.dropped_images = Counter(
            "maskrt_dropped_images",
            "images dropped before inference because their request gave up",
            ["reason"],
            registry=r,
        )
        self.failed_batches = Counter(
            "maskrt_failed_batches", "inference batches whose backend call raised", registry=r
        )
        self.queue_depth = Gauge(
            "maskrt_queue_depth", "images waiting in the batch queue", registry=r
        )
        self.inflight = Gauge(
            "maskrt_inflight_requests", "inference requests being handled", registry=r
        )
        self.model_info = Gauge(
            "maskrt_model_info",
            "the served model (value 1)",
            ["name", "backend", "device"],
            registry=r,
        )
        self.gpu_memory: Gauge | None = None
        if gpu_device is not None and gpu_device.startswith("cuda"):
            self.gpu_memory = Gauge(
                "maskrt_gpu_memory_used_bytes",
                "memory in use on the GPU (driver view, all processes)",
                ["device"],
                registry=r,
            )
            self.gpu_memory.labels(gpu_device).set_function(_gpu_used(gpu_device))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def count_drop(self, reason: str) -> None:
        self.dropped_images.labels(reason).inc()

    def set_model(self, name: str, backend: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, backend, device).set(1)


def _gpu_used(device: str) -> Callable[[], float]:
    def read() -> float:
        import torch

        try:
            free, total = torch.cuda.mem_get_info(torch.device(device))
        except Exception:  # a broken driver must not break the scrape
            return math.nan
        return float(total - free)

    return read
