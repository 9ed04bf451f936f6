"""The dynamic batcher: a bounded queue of images and one worker that runs them in batches.

- :meth:`Batcher.submit` puts a request's images in the queue, all or none: when they do not fit
  (``max_queue`` images) it raises :class:`QueueFull` and the caller answers 503.
- The worker takes the oldest image and then up to ``max_batch - 1`` more. It waits for more only
  while the batch is not full, the first image has waited less than ``max_delay`` *and* more images
  are on their way (:meth:`Batcher.expecting`: requests whose bodies are being read or decoded), so
  a lone request is never held back for a batch that cannot form.
- Jobs whose request gave up (timeout, client gone) are dropped before inference.
- The batch runs in a dedicated thread (``process(jobs) -> results``), so the event loop never
  blocks; its results (or its exception, for that batch's jobs only) go to each job's future and
  the worker carries on with the next batch.
- :meth:`Batcher.stop` refuses new jobs, runs everything already queued, and returns.

The batcher knows nothing about images or models: ``process`` does the work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("maskrt.batcher")


class QueueFull(Exception):
    """The queue has no room for the images of a request."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the batch queue is full")
        self.retry_after_s = retry_after_s


class BatcherClosed(Exception):
    """The batcher is stopping and takes no new jobs."""


class BatchFailed(Exception):
    """``process`` raised for the batch this job was in."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass(eq=False)
class Job:
    """One image of one request. ``payload`` is what ``process`` gets; ``future`` its result."""

    payload: Any
    future: asyncio.Future[Any]
    request_id: str = ""
    enqueued: float = 0.0  # loop time
    queue_wait_s: float = 0.0  # set when the job's batch starts
    dropped: str | None = None  # why the job will not run ("timeout", "client disconnected")
    batcher: Batcher | None = field(default=None, repr=False)

    def drop(self, reason: str) -> None:
        """The request gave up: leave the queue at once (freeing its slot) and never run; a job
        already in a running batch just has its result discarded."""
        if self.dropped is None:
            self.dropped = reason
        if not self.future.done():
            self.future.cancel()
        if self.batcher is not None:
            self.batcher.discard(self)


@dataclass
class BatcherStats:
    batch_seconds_ema: float = 0.0
    running_since: float | None = None  # monotonic time the current batch started


class Batcher:
    """Queue + worker. Create inside the running event loop's thread; call :meth:`start`."""

    def __init__(
        self,
        process: Callable[[list[Job]], Sequence[Any]],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        executor: Executor | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        on_batch_start: Callable[[list[Job]], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
        on_batch_failed: Callable[[], None] | None = None,
    ) -> None:
        """``on_drop(reason)``: a job left unrun (its request gave up); ``on_batch_failed()``:
        ``process`` raised. Both are called on the event loop."""
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay_s >= 0")
        self.process = process
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="maskrt-infer")
        self._on_queue_depth = on_queue_depth or (lambda n: None)
        self._on_batch_start = on_batch_start or (lambda jobs: None)
        self._on_drop = on_drop or (lambda reason: None)
        self._on_batch_failed = on_batch_failed or (lambda: None)
        self._queue: collections.deque[Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._expected = 0
        self._closing = False
        self._worker: asyncio.Task | None = None
        self.stats = BatcherStats()

    # -- producer side --------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request's images on their way (body being read, images being decoded): the
        worker may wait (up to ``max_delay``) for them to join the batch it is forming."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            self._wakeup.set()

    def submit(self, payloads: Sequence[Any], request_id: str = "") -> list[Job]:
        """Queue the images of one request (all or none) and return their jobs."""
        if self._closing:
            raise BatcherClosed()
        if len(self._queue) + len(payloads) > self.max_queue:
            raise QueueFull(self.retry_after_s())
        loop = asyncio.get_running_loop()
        now = loop.time()
        jobs = [Job(p, loop.create_future(), request_id, now, batcher=self) for p in payloads]
        self._queue.extend(jobs)
        self._on_queue_depth(len(self._queue))
        self._wakeup.set()
        return jobs

    def discard(self, job: Job) -> None:
        """Take a dropped job out of the queue now (:meth:`Job.drop` calls it); a job the worker
        already took is left to the worker."""
        try:
            self._queue.remove(job)
        except ValueError:  # already taken by the worker
            return
        self._on_queue_depth(len(self._queue))
        self._count_drop(job)
        self._wakeup.set()

    def _count_drop(self, job: Job) -> None:
        reason = job.dropped or "cancelled"
        self._on_drop(reason)
        log.info("job dropped before inference: %s", reason, extra={"request_id": job.request_id})

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained: batches queued x recent batch time."""
        batches = math.ceil(max(len(self._queue), 1) / self.max_batch)
        return max(1, math.ceil(batches * self.stats.batch_seconds_ema))

    # -- worker --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="maskrt-batcher"
            )

    async def stop(self, timeout_s: float | None = None) -> None:
        """Take no new jobs, run the queued ones, stop the worker (cancelled after ``timeout_s``)."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                log.error(
                    "batcher did not drain in %.1f s; %d jobs dropped", timeout_s, len(self._queue)
                )
                self._worker.cancel()
            for job in self._queue:
                job.drop("server stopping")
            self._queue.clear()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    def running_for(self) -> float:
        """Seconds the current batch has been running (0 when idle)."""
        since = self.stats.running_since
        return 0.0 if since is None else time.monotonic() - since

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_delay_s
            while (
                0 < len(self._queue) < self.max_batch and self._expected > 0 and not self._closing
            ):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._on_queue_depth(len(self._queue))
            live = []
            for job in batch:
                if job.dropped is not None or job.future.done():
                    self._count_drop(job)
                else:
                    live.append(job)
            if not live:
                continue
            now = loop.time()
            for job in live:
                job.queue_wait_s = now - job.enqueued
            await self._run_batch(loop, live)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        self.stats.running_since = time.monotonic()
        started = time.perf_counter()
        try:
            self._on_batch_start(jobs)
            results = await loop.run_in_executor(self._executor, self.process, jobs)
            if len(results) != len(jobs):
                raise RuntimeError(f"process returned {len(results)} results for {len(jobs)} jobs")
        except asyncio.CancelledError:
            for job in jobs:
                job.drop("server stopping")
            raise
        except Exception as exc:
            self._on_batch_failed()
            log.error(
                "batch of %d failed",
                len(jobs),
                exc_info=exc,
                extra={"fields": {"request_ids": sorted({j.request_id for j in jobs})}},
            )
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(BatchFailed(exc))
        else:
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)
        finally:
            seconds = time.perf_counter() - started
            self.stats.running_since = None
            ema = self.stats.batch_seconds_ema
            self.stats.batch_seconds_ema = seconds if ema == 0 else 0.8 * ema + 0.2 * seconds
