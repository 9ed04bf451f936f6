"""What one app owns, and its life cycle: load the model, warm it up, turn ready, drain, stop.

The app starts listening at once (``/healthz`` answers) while :meth:`ServerState.load` opens the
backend in the inference thread, runs one warm-up batch of every size the backend will use, then
turns ready (``/readyz`` 200) and starts the batcher. ``status``: loading -> ready -> draining, or
loading -> failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from maskrt.errors import MaskrtError
from maskrt.runtime.admission import PixelBudget
from maskrt.runtime.backends.base import Backend
from maskrt.runtime.batcher import Batcher, Job
from maskrt.runtime.pipeline import (
    InferredBatch,
    Pipeline,
    PostOptions,
    model_info,
    model_ref,
)
from maskrt.runtime.postprocess import Detection
from maskrt.server.errors import ApiError
from maskrt.server.metrics import Metrics
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings

log = logging.getLogger("maskrt.server")

Opener = Callable[[Settings], Backend]


@dataclass
class Work:
    """What the batch worker gets for one image."""

    image: Tensor  # uint8 [3, H, W]
    options: PostOptions


@dataclass
class JobResult:
    """One image's detections and the stage times (seconds) of the batch it ran in."""

    detections: list[Detection]
    preprocess_s: float
    inference_s: float
    postprocess_s: float


class ServerState:
    """The model, the batcher, the executors, the metrics and the keys of one app."""

    def __init__(
        self,
        settings: Settings,
        opener: Opener,
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        self.settings = settings
        self.opener = opener
        self.on_fatal = on_fatal
        device = settings.resolved_device()
        self.metrics = Metrics(
            max_batch=settings.max_batch, gpu_device=device if device.startswith("cuda") else None
        )
        self.keys = ApiKeys(settings.api_keys)
        self.pixels = PixelBudget(
            settings.max_request_pixels,
            settings.max_inflight_pixels,
            self.metrics.inflight_pixels.set,
        )
        self.status = "loading"
        self.error: str | None = None
        self.pipeline: Pipeline | None = None
        self.backend: Backend | None = None
        self.batcher: Batcher | None = None
        self.model_ref: dict[str, str] = {}
        self.model_info: dict[str, Any] = {}
        self.warmup_seconds: dict[int, float] = {}  # batch size -> seconds of its warm-up run
        self.infer_executor = ThreadPoolExecutor(1, thread_name_prefix="maskrt-infer")
        # post-processing of one batch while the next one is inferred (PIPELINE_DEPTH >= 1)
        self.post_executor = ThreadPoolExecutor(1, thread_name_prefix="maskrt-post")
        self.decode_executor = ThreadPoolExecutor(
            settings.decode_threads or max(1, min(4, os.cpu_count() or 1)),
            thread_name_prefix="maskrt-decode",
        )
        self.load_task: asyncio.Task[None] | None = None
        # a batch running longer than this marks the process unhealthy (GET /healthz 503)
        self.stuck_after_s = max(120.0, 4 * settings.request_timeout_s)

    # -- life cycle ----------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load in the background; the app serves probes meanwhile."""
        self.load_task = asyncio.get_running_loop().create_task(self.load(), name="maskrt-load")

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            backend = await loop.run_in_executor(self.infer_executor, self.opener, self.settings)
            pipeline = Pipeline(backend)
            sizes = [s for s in backend.warmup_batch_sizes() if s <= self.settings.max_batch]
            loaded = time.perf_counter()
            warm = await loop.run_in_executor(self.infer_executor, pipeline.warmup, sizes)
        except Exception as exc:
            self._failed(exc)
            return
        self.backend, self.pipeline = backend, pipeline
        self.warmup_seconds = warm
        max_batch = self._describe(backend)
        self.batcher = Batcher(
            self._infer,
            max_batch=max_batch,
            max_delay_s=self.settings.max_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            finish=self._finish,
            pipeline_depth=self.settings.pipeline_depth,
            executor=self.infer_executor,
            finish_executor=self.post_executor,
            on_queue_depth=self.metrics.queue_depth.set,
            on_batch_start=self._batch_started,
            on_drop=self.metrics.count_drop,
            on_batch_failed=self.metrics.failed_batches.inc,
        )
        self.batcher.start()
        if self.status == "loading":
            self.status = "ready"
        log.info(
            "model ready",
            extra={
                "fields": {
                    **self.model_ref,
                    "max_batch": max_batch,
                    "load_s": round(loaded - started, 3),
                    "warmup_s": {str(k): round(v, 3) for k, v in warm.items()},
                }
            },
        )

    def _failed(self, exc: Exception) -> None:
        self.status = "failed"
        self.error = str(exc) if isinstance(exc, MaskrtError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "the model failed to load: %s",
            self.error,
            exc_info=None if isinstance(exc, MaskrtError) else exc,
        )
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def _describe(self, backend: Backend) -> int:
        """Fill ``model_ref`` / ``model_info`` and the model metric; returns the max batch."""
        info = backend.info
        self.model_ref = model_ref(backend)
        max_batch = min(self.settings.max_batch, backend.max_batch)
        self.model_info = model_info(backend, max_batch)
        self.metrics.set_model(info.name, backend.name, self.model_ref["device"])
        return max_batch

    async def shutdown(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.stop(timeout_s=self.settings.request_timeout_s + 5)
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        self.infer_executor.shutdown(wait=False, cancel_futures=True)
        self.post_executor.shutdown(wait=False, cancel_futures=True)
        self.decode_executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    def begin_drain(self) -> None:
        """SIGTERM: not ready any more; what is queued still runs."""
        if self.status in ("loading", "ready"):
            self.status = "draining"
            log.info("draining: finishing queued requests")

    # -- batch worker side (inference thread) --------------------------------------------------

    def _batch_started(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.metrics.queue_wait.observe(job.queue_wait_s)

    def _infer(self, jobs: list[Job]) -> InferredBatch:
        """Stage A (inference thread): letterbox and infer."""
        assert self.pipeline is not None
        inferred = self.pipeline.infer_batch([j.payload.image for j in jobs])
        m = self.metrics
        m.batch_size.observe(len(jobs))
        m.images.inc(len(jobs))
        m.preprocess.observe(inferred.preprocess_s)
        m.inference.labels(self.model_ref["backend"]).observe(inferred.inference_s)
        return inferred

    def _finish(self, jobs: list[Job], inferred: InferredBatch) -> list[JobResult]:
        """Stage B (post-processing thread): detections and masks; no mask is pasted for an
        image whose request has given up meanwhile."""
        assert self.pipeline is not None
        works: list[Work] = [j.payload for j in jobs]
        options = [
            w.options if j.dropped is None else replace(w.options, want_masks=False)
            for j, w in zip(jobs, works)
        ]
        out = self.pipeline.finish_batch(inferred, options)
        self.metrics.postprocess.observe(out.postprocess_s)
        self.metrics.detections.inc(sum(len(d) for d in out.detections))
        return [
            JobResult(d, out.preprocess_s, out.inference_s, out.postprocess_s)
            for d in out.detections
        ]

    # -- request side --------------------------------------------------------------------------

    def ready_batcher(self) -> tuple[Batcher, Pipeline]:
        """The batcher and pipeline a request may use now, else the 503 :meth:`not_ready`."""
        batcher, pipeline = self.batcher, self.pipeline
        # requests already on open connections are still served while draining
        if (
            self.status in ("ready", "draining")
            and batcher is not None
            and pipeline is not None
            and not batcher.closing
        ):
            return batcher, pipeline
        raise self.not_ready()

    def not_ready(self) -> ApiError:
        if self.status == "failed":  # what failed (paths, library errors) is in the log only
            return ApiError(
                503,
                "not_ready",
                "the model failed to load (see the server log)",
                {"Retry-After": "30"},
            )
        if self.status == "draining":
            return ApiError(
                503, "shutting_down", "the server is shutting down", {"Retry-After": "5"}
            )
        return ApiError(
            503, "not_ready", "the model is loading and warming up", {"Retry-After": "5"}
        )
