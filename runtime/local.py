"""The data plane of one process: the model in this process, behind the dynamic batcher.

:meth:`LocalDataPlane.start` opens the backend in the inference thread while front doors already
answer probes, runs one warm-up batch of every size the backend will use, then turns ready and
starts the :class:`~maskrt.runtime.batcher.Batcher`, whose batches run as a two-stage pipeline:
letterbox and infer in the inference thread, paste and encode the masks in the post-processing
thread (``pipeline_depth``), so the device never waits for the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from maskrt.errors import MaskrtError, describe
from maskrt.runtime.backends import open_backend
from maskrt.runtime.backends.base import Backend
from maskrt.runtime.batcher import Batcher, BatcherClosed, BatchFailed, Job, QueueFull
from maskrt.runtime.dataplane import DataPlane, ServedModel, Shared, unless_gone
from maskrt.runtime.errors import ClientGone, InferenceFailed, Unavailable
from maskrt.runtime.options import RuntimeOptions
from maskrt.runtime.pipeline import Inferred, InferredBatch, Pipeline, PostOptions
from maskrt.runtime.statistics import Statistics

log = logging.getLogger("maskrt.runtime")

Opener = Callable[[RuntimeOptions], Backend]


@dataclass
class Work:
    """What the batch worker gets for one image."""

    image: torch.Tensor  # uint8 [3, H, W]
    options: PostOptions


class LocalDataPlane(DataPlane):
    """``LocalDataPlane(options)``: the backend ``opener(options)`` opens (default
    :func:`~maskrt.runtime.backends.open_backend`), in this process. ``on_fatal(exc)`` is called
    when the model cannot be loaded (``maskrt serve`` then exits)."""

    def __init__(
        self,
        options: RuntimeOptions,
        statistics: Statistics | None = None,
        *,
        shared: Shared | None = None,
        opener: Opener = open_backend,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(options, statistics, shared)
        if self.owns_shared:
            self.shared.queued = lambda: 0 if self.batcher is None else self.batcher.depth
        self.opener = opener
        self.on_fatal = on_fatal
        self.error: str | None = None
        self.backend: Backend | None = None
        self.pipeline: Pipeline | None = None
        self.batcher: Batcher | None = None
        self.warmup_seconds: dict[int, float] = {}  # batch size -> seconds of its warm-up run
        self.infer_executor = ThreadPoolExecutor(1, thread_name_prefix="maskrt-infer")
        # post-processing of one batch while the next one is inferred (PIPELINE_DEPTH >= 1)
        self.post_executor = ThreadPoolExecutor(1, thread_name_prefix="maskrt-post")
        self.load_task: asyncio.Task[None] | None = None
        # a batch running longer than this marks the process unhealthy
        self.stuck_after_s = max(120.0, 4 * options.request_timeout_s)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.load_task = asyncio.get_running_loop().create_task(self._load(), name="maskrt-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            backend = await loop.run_in_executor(self.infer_executor, self.opener, self.options)
            pipeline = Pipeline(backend)
            max_batch = min(self.options.max_batch, backend.max_batch)
            sizes = [s for s in backend.warmup_batch_sizes() if s <= max_batch]
            loaded = time.perf_counter()
            warm = await loop.run_in_executor(self.infer_executor, pipeline.warmup, sizes)
        except Exception as exc:
            self._failed(exc)
            return
        self.backend, self.pipeline, self.warmup_seconds = backend, pipeline, warm
        self.decode_device = pipeline.device
        self.model = ServedModel.of(
            backend, max_batch, self.options.model_name, self.options.model_version
        )
        self.statistics.model_loaded(
            self.model.name, self.model.backend, self.model.device, self.model.fallback_from
        )
        self.batcher = Batcher(
            self._infer,
            max_batch=max_batch,
            max_delay_s=self.options.max_delay_ms / 1000,
            max_queue=self.options.max_queue,
            finish=self._finish,
            pipeline_depth=self.options.pipeline_depth,
            executor=self.infer_executor,
            finish_executor=self.post_executor,
            on_queue_depth=self.statistics.queued,
            on_batch_start=self._batch_started,
            on_drop=self.statistics.image_dropped,
            on_batch_failed=self.statistics.batch_failed,
        )
        self.batcher.start()
        if self.status == "loading":
            self.status = "ready"
        log.info(
            "model ready",
            extra={
                "fields": {
                    **self.model.ref(),
                    "max_batch": max_batch,
                    "load_s": round(loaded - started, 3),
                    "warmup_s": {str(k): round(v, 3) for k, v in warm.items()},
                }
            },
        )

    def _failed(self, exc: Exception) -> None:
        self.status = "failed"
        self.error = describe(exc)
        log.error(
            "the model failed to load: %s",
            self.error,
            exc_info=None if isinstance(exc, MaskrtError) else exc,
        )
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def stop(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.stop(timeout_s=self.options.request_timeout_s + 5)
        if self.load_task is not None and not self.load_task.done():
            self.load_task.cancel()
        self.infer_executor.shutdown(wait=False, cancel_futures=True)
        self.post_executor.shutdown(wait=False, cancel_futures=True)
        # nothing of the model stays referenced once stopped (an unloaded version frees it); the
        # closed batcher stays, to refuse a late request
        self.backend = self.pipeline = None
        await super().stop()
        log.info("stopped")

    def stuck_for(self) -> float | None:
        running = 0.0 if self.batcher is None else self.batcher.running_for()
        return running if running > self.stuck_after_s else None

    # -- batch worker side (inference and post-processing threads) ------------------------------

    def _batch_started(self, jobs: list[Job]) -> None:
        self.statistics.batch_started([job.queue_wait_s for job in jobs])

    def _infer(self, jobs: list[Job]) -> InferredBatch:
        """Stage A (inference thread): letterbox and infer."""
        assert self.pipeline is not None
        inferred = self.pipeline.infer_batch([j.payload.image for j in jobs])
        self.statistics.batch_inferred(len(jobs), inferred.preprocess_s, inferred.inference_s)
        return inferred

    def _finish(self, jobs: list[Job], inferred: InferredBatch) -> list[Inferred]:
        """Stage B (post-processing thread): detections and masks; no mask is pasted for an
        image whose request has given up meanwhile."""
        assert self.pipeline is not None
        works: list[Work] = [j.payload for j in jobs]
        options = [
            w.options if j.dropped is None else replace(w.options, want_masks=False)
            for j, w in zip(jobs, works)
        ]
        out = self.pipeline.finish_batch(inferred, options)
        self.statistics.batch_finished(
            len(jobs), out.postprocess_s, sum(len(d) for d in out.detections)
        )
        return out.per_image()

    # -- request side --------------------------------------------------------------------------

    def _expecting(self) -> contextlib.AbstractContextManager[None]:
        assert self.batcher is not None
        return self.batcher.expecting()

    async def _run(
        self,
        images: Sequence[torch.Tensor],
        options: PostOptions,
        request_id: str,
        expired: Callable[[], bool],
        gone: Callable[[], Awaitable[None]] | None,
    ) -> list[Inferred]:
        batcher = self.batcher
        assert batcher is not None
        try:
            if not self.shared.admits(batcher.depth, len(images)):
                raise QueueFull(batcher.retry_after_s())
            jobs = batcher.submit([Work(image, options) for image in images], request_id)
        except QueueFull as exc:
            raise Unavailable(
                "queue_full",
                f"the server is busy ({self.shared.queued()} images queued, {batcher.depth} of "
                f"them for this model); retry in {exc.retry_after_s} s",
                retry_after_s=exc.retry_after_s,
            ) from None
        except BatcherClosed:
            raise self.not_ready() from None
        try:
            shares = await unless_gone(asyncio.gather(*(job.future for job in jobs)), gone)
        except BatchFailed:
            raise InferenceFailed(
                "inference_failed",
                f"inference failed for this request's batch; request id {request_id}",
            ) from None
        except ClientGone:
            for job in jobs:
                job.drop("client disconnected")
            raise
        except BaseException:
            # cancelled: by the deadline, or the server stopping; the jobs leave the queue at once
            for job in jobs:
                job.drop("timeout" if expired() else "cancelled")
            raise
        for job, share in zip(jobs, shares):
            share.queue_s = job.queue_wait_s
        return shares
