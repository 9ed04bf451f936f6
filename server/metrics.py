"""Prometheus metrics, named as docs/architecture.md fixes them (prefix ``maskrt_``, base units).

:class:`Metrics` holds every metric of a server. Each loaded model version's data plane reports to
its own :class:`ModelMetrics` (:meth:`Metrics.for_model`), a
:class:`~maskrt.runtime.statistics.Statistics` that exports the events as they happen labelled
``model`` and ``version``; the requests' own metrics (kept by the request middleware and the gRPC
front door) carry the model version that answered. Each app owns one on its own
``CollectorRegistry`` (so several apps can live in one process, as in tests);
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
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

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


MODEL = ("model", "version")  # the labels of one model version's series


class Metrics(Statistics):
    """All ``maskrt_*`` metrics of one server.

    The server's own :class:`Statistics` exports what its data planes share (the decoded pixels in
    flight); :meth:`for_model` gives each loaded model version the :class:`ModelMetrics` that
    exports its events labelled ``model`` and ``version``, and :meth:`model_unloaded` removes
    them, the version's request series too: only loaded versions have series, so the label sets
    stay as few as the versions a server may hold (``MAX_LOADED_MODELS``).

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
            [*MODEL, "endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "maskrt_requests", "HTTP requests answered", [*MODEL, "endpoint", "status"], registry=r
        )
        self.queue_wait = Histogram(
            "maskrt_queue_wait_seconds",
            "time an image waits in the batch queue",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "maskrt_preprocess_duration_seconds",
            "batch letterboxing on the backend's device",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "maskrt_inference_duration_seconds",
            "deploy graph run of one batch",
            [*MODEL, "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess_seconds = Histogram(
            "maskrt_postprocess_duration_seconds",
            "post-processing (paste, RLE) of one batch",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(  # server-wide: the decoding threads are shared
            "maskrt_decode_duration_seconds",
            "decoding of one uploaded image, by decoder (nvjpeg, pillow)",
            ["decoder"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "maskrt_batch_size",
            "images per inference batch",
            MODEL,
            buckets=batch_size_buckets(max_batch),
            registry=r,
        )
        self.images_total = Counter("maskrt_images", "images inferred", MODEL, registry=r)
        self.detections_total = Counter(
            "maskrt_detections", "detections returned", MODEL, registry=r
        )
        self.dropped_images = Counter(
            "maskrt_dropped_images",
            "images dropped before inference because their request gave up",
            [*MODEL, "reason"],
            registry=r,
        )
        self.failed_batches_total = Counter(
            "maskrt_failed_batches",
            "inference batches whose backend call raised",
            MODEL,
            registry=r,
        )
        self.queue_depth_gauge = Gauge(
            "maskrt_queue_depth", "images waiting in the batch queue", MODEL, registry=r
        )
        self.inflight_pixels = Gauge(  # server-wide: the pixel budgets are shared
            "maskrt_inflight_pixels",
            "decoded pixels of the admitted requests (decoding, queued, in a batch)",
            registry=r,
        )
        self.inflight_requests = Gauge(
            "maskrt_inflight_requests", "inference requests being handled", MODEL, registry=r
        )
        self.model_gauge = Gauge(
            "maskrt_model_info",
            "the served model version (value 1)",
            ["name", "version", "backend", "device"],
            registry=r,
        )
        self.fallback_gauge = Gauge(
            "maskrt_backend_fallback",
            "1 when the model is served on `backend` because `wanted`, tried first, failed to open "
            "(see GET /v1/model's fallback_reason); 0, with wanted = backend, when not",
            [*MODEL, "wanted", "backend"],
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
        self._versions: dict[tuple[str, str], _Series] = {}
        self._no_model = _Series(("", ""))  # requests that named no model
        self._lock = threading.Lock()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def request_answered(
        self, endpoint: str, status: str, model: tuple[str, str] | None, seconds: float
    ) -> None:
        """One request of any front door: ``model`` is the (name, version) that answered it, or
        ``None`` when it named none (a probe, a page, an error before a model was chosen). A
        version unloaded before its request ended (a rare race) counts it without them, so that
        no series outlives its version."""
        series = self._versions.get(model) if model is not None else None
        series = series or self._no_model
        series.observe(self.request_duration, seconds, endpoint, status)
        series.inc(self.requests, 1, endpoint, status)

    # -- the model versions --------------------------------------------------------------------

    def for_model(self, name: str, version: str) -> ModelMetrics:
        with self._lock:
            series = self._versions.setdefault((name, version), _Series((name, version)))
            series.holders += 1
        return ModelMetrics(self, series)

    def model_unloaded(self, name: str, version: str) -> None:
        """Removes the version's series once no data plane of it is left (a reload of the same
        version from a changed file shares them with the one it replaces)."""
        with self._lock:
            series = self._versions.get((name, version))
            if series is None:
                return
            series.holders -= 1
            if series.holders > 0:
                return
            del self._versions[(name, version)]
            series.remove()  # before a new data plane of the same version can take its labels

    def pixels_admitted(self, in_flight: int) -> None:
        super().pixels_admitted(in_flight)
        self.inflight_pixels.set(in_flight)


M = TypeVar("M", bound=Counter | Gauge | Histogram)


class _Series:
    """The series of one model version, whose labels start with ``key`` (its name and version),
    remembered so that they can be removed together when it is unloaded; ``holders``: its data
    planes (two while a version is reloaded from a changed file). Once removed, it exports
    nothing more (a late event of an unloaded version)."""

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.holders = 0
        # the children made, by metric and labels: an event finds its series here
        self._created: dict[tuple[Counter | Gauge | Histogram, tuple[str, ...]], Any] = {}
        self._removed = False
        self._lock = threading.Lock()

    def _child(self, metric: M, labels: tuple[str, ...]) -> M | None:
        with self._lock:
            if self._removed:
                return None
            child = self._created.get((metric, labels))
            if child is None:
                child = self._created[metric, labels] = metric.labels(*self.key, *labels)
            return cast(M, child)  # the same class as the metric

    def observe(self, metric: Histogram, value: float | None, *labels: str) -> None:
        """``value`` into ``metric``; ``None``: its series only, empty."""
        child = self._child(metric, labels)
        if child is not None and value is not None:
            child.observe(value)

    def inc(self, metric: Counter | Gauge, amount: float, *labels: str) -> None:
        """``amount`` added (0: the series, at 0; below 0: a gauge going down)."""
        child = self._child(metric, labels)
        if child is not None:
            child.inc(amount)

    def set(self, metric: Gauge, value: float, *labels: str) -> None:
        child = self._child(metric, labels)
        if child is not None:
            child.set(value)

    def forget(self, metric: Counter | Gauge | Histogram) -> None:
        """Removes ``metric``'s series of this version (a model info about to be replaced)."""
        with self._lock:
            for created in [c for c in self._created if c[0] is metric]:
                del self._created[created]
                metric.remove(*self.key, *created[1])

    def remove(self) -> None:
        with self._lock:
            self._removed = True
            for metric, labels in self._created:
                metric.remove(*self.key, *labels)
            self._created.clear()


class ModelMetrics(Statistics):
    """One model version's :class:`Statistics`, exported into the server's :class:`Metrics`
    labelled ``model`` and ``version`` as the events happen. Decoding and the pixels in flight
    are the server's (shared threads and budgets): they go to its unlabelled series."""

    def __init__(self, metrics: Metrics, series: _Series) -> None:
        super().__init__()
        self.metrics = metrics
        self.series = series
        self.backend = ""  # the inference histogram's label, once the model is loaded

    def model_loaded(
        self, name: str, backend: str, device: str, fallback_from: str | None = None
    ) -> None:
        """Sets the version's model info and fallback gauges and starts its series at 0. A data
        plane made before its model's name was known (``--model``, Ray Serve: the checkpoint's
        config may name it) takes the name it loaded under."""
        super().model_loaded(name, backend, device, fallback_from)
        m, version = self.metrics, self.series.key[1]
        if name != self.series.key[0]:
            old = self.series.key
            self.series = m.for_model(name, version).series
            m.model_unloaded(*old)
        self.backend = backend
        s = self.series
        for gauge in (m.model_gauge, m.fallback_gauge):  # a reload replaces the version's
            s.forget(gauge)
        s.set(m.model_gauge, 1, backend, device)
        s.set(
            m.fallback_gauge, 0 if fallback_from is None else 1, fallback_from or backend, backend
        )
        for zero in (
            m.images_total,
            m.detections_total,
            m.failed_batches_total,
            m.queue_depth_gauge,
            m.inflight_requests,
        ):
            s.inc(zero, 0)
        for histogram in (m.queue_wait, m.batch_size, m.preprocess_seconds, m.postprocess_seconds):
            s.observe(histogram, None)
        s.observe(m.inference_seconds, None, backend)

    def request_started(self) -> None:
        super().request_started()
        self.series.inc(self.metrics.inflight_requests, 1)

    def request_ended(self, seconds: float, ok: bool | None) -> None:
        super().request_ended(seconds, ok)
        self.series.inc(self.metrics.inflight_requests, -1)

    def image_decoded(self, decoder: str, seconds: float) -> None:
        super().image_decoded(decoder, seconds)
        self.metrics.decode_seconds.labels(decoder).observe(seconds)

    def pixels_admitted(self, in_flight: int) -> None:
        """A data plane with resources of its own (``--model``) reports the server's pixels in
        flight here."""
        super().pixels_admitted(in_flight)
        self.metrics.pixels_admitted(in_flight)

    def queued(self, depth: int) -> None:
        # by the change, as the two data planes of a version being reloaded share its series
        change = depth - self.queue_depth
        super().queued(depth)
        self.series.inc(self.metrics.queue_depth_gauge, change)

    def batch_started(self, queue_waits: Sequence[float]) -> None:
        super().batch_started(queue_waits)
        for wait in queue_waits:
            self.series.observe(self.metrics.queue_wait, wait)

    def batch_inferred(self, images: int, preprocess_s: float, inference_s: float) -> None:
        super().batch_inferred(images, preprocess_s, inference_s)
        s, m = self.series, self.metrics
        s.observe(m.batch_size, images)
        s.inc(m.images_total, images)
        s.observe(m.preprocess_seconds, preprocess_s)
        s.observe(m.inference_seconds, inference_s, self.backend)

    def batch_finished(self, images: int, postprocess_s: float, detections: int) -> None:
        super().batch_finished(images, postprocess_s, detections)
        self.series.observe(self.metrics.postprocess_seconds, postprocess_s)
        self.series.inc(self.metrics.detections_total, detections)

    def batch_failed(self) -> None:
        super().batch_failed()
        self.series.inc(self.metrics.failed_batches_total, 1)

    def image_dropped(self, reason: str) -> None:
        super().image_dropped(reason)
        self.series.inc(self.metrics.dropped_images, 1, reason)


def _gpu_used(device: str) -> Callable[[], float]:
    def read() -> float:
        import torch

        try:
            free, total = torch.cuda.mem_get_info(torch.device(device))
        except Exception:  # a broken driver must not break the scrape
            return math.nan
        return float(total - free)

    return read
