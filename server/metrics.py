"""Prometheus metrics, named as docs/architecture.md fixes them (prefix ``maskrt_``, base units).

:class:`Metrics` is the data plane's :class:`~maskrt.runtime.statistics.Statistics`, exported as
the events happen, plus the HTTP requests' own metrics (kept by the request middleware). Each app
owns one on its own ``CollectorRegistry`` (so several apps can live in one process, as in tests);
``GET /metrics`` renders that registry, which also carries the process, platform and
garbage-collector collectors of ``prometheus_client``.

Buckets: the stage and request latencies of this server range from ~0.1 ms (post-processing of an
image without detections, a health probe) to tens of seconds (a big batch on a CPU under load,
a request queued until its timeout), so the latency buckets run from 100 us to 60 s, about three
per decade. Batch sizes get one bucket per size up to 16, then a geometric series up to
``max_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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

from maskrt.runtime.statistics import Statistics

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


class Metrics(Statistics):
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
        super().__init__()
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
        self.preprocess_seconds = Histogram(
            "maskrt_preprocess_duration_seconds",
            "batch letterboxing on the backend's device",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "maskrt_inference_duration_seconds",
            "deploy graph run of one batch",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess_seconds = Histogram(
            "maskrt_postprocess_duration_seconds",
            "post-processing (paste, RLE) of one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
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
        self.images_total = Counter("maskrt_images", "images inferred", registry=r)
        self.detections_total = Counter("maskrt_detections", "detections returned", registry=r)
        self.dropped_images = Counter(
            "maskrt_dropped_images",
            "images dropped before inference because their request gave up",
            ["reason"],
            registry=r,
        )
        self.failed_batches_total = Counter(
            "maskrt_failed_batches", "inference batches whose backend call raised", registry=r
        )
        self.queue_depth_gauge = Gauge(
            "maskrt_queue_depth", "images waiting in the batch queue", registry=r
        )
        self.inflight_pixels = Gauge(
            "maskrt_inflight_pixels",
            "decoded pixels of the admitted requests (decoding, queued, in a batch)",
            registry=r,
        )
        self.inflight_requests = Gauge(
            "maskrt_inflight_requests", "inference requests being handled", registry=r
        )
        self.model_gauge = Gauge(
            "maskrt_model_info",
            "the served model (value 1)",
            ["name", "backend", "device"],
            registry=r,
        )
        self.fallback_gauge = Gauge(
            "maskrt_backend_fallback",
            "1 when the model is served on `backend` because `wanted`, tried first, failed to open "
            "(see GET /v1/model's fallback_reason); 0, with wanted = backend, when not",
            ["wanted", "backend"],
            registry=r,
        )
        self.backend = ""  # the inference histogram's label, once a model is loaded
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

    # -- the data plane's events, exported -----------------------------------------------------

    def model_loaded(
        self, name: str, backend: str, device: str, fallback_from: str | None = None
    ) -> None:
        super().model_loaded(name, backend, device, fallback_from)
        self.backend = backend
        self.model_gauge.clear()
        self.model_gauge.labels(name, backend, device).set(1)
        self.fallback_gauge.clear()
        self.fallback_gauge.labels(fallback_from or backend, backend).set(
            0 if fallback_from is None else 1
        )

    def request_started(self) -> None:
        super().request_started()
        self.inflight_requests.inc()

    def request_ended(self, seconds: float, ok: bool | None) -> None:
        super().request_ended(seconds, ok)
        self.inflight_requests.dec()

    def image_decoded(self, decoder: str, seconds: float) -> None:
        super().image_decoded(decoder, seconds)
        self.decode_seconds.labels(decoder).observe(seconds)

    def pixels_admitted(self, in_flight: int) -> None:
        super().pixels_admitted(in_flight)
        self.inflight_pixels.set(in_flight)

    def queued(self, depth: int) -> None:
        super().queued(depth)
        self.queue_depth_gauge.set(depth)

    def batch_started(self, queue_waits: Sequence[float]) -> None:
        super().batch_started(queue_waits)
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def batch_inferred(self, images: int, preprocess_s: float, inference_s: float) -> None:
        super().batch_inferred(images, preprocess_s, inference_s)
        self.batch_size.observe(images)
        self.images_total.inc(images)
        self.preprocess_seconds.observe(preprocess_s)
        self.inference_seconds.labels(self.backend).observe(inference_s)

    def batch_finished(self, images: int, postprocess_s: float, detections: int) -> None:
        super().batch_finished(images, postprocess_s, detections)
        self.postprocess_seconds.observe(postprocess_s)
        self.detections_total.inc(detections)

    def batch_failed(self) -> None:
        super().batch_failed()
        self.failed_batches_total.inc()

    def image_dropped(self, reason: str) -> None:
        super().image_dropped(reason)
        self.dropped_images.labels(reason).inc()


def _gpu_used(device: str) -> Callable[[], float]:
    def read() -> float:
        import torch

        try:
            free, total = torch.cuda.mem_get_info(torch.device(device))
        except Exception:  # a broken driver must not break the scrape
            return math.nan
        return float(total - free)

    return read
