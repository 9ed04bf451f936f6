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
- With a second stage (``finish(jobs, staged) -> results``) and ``pipeline_depth >= 1`` the
  batch is a two-stage pipeline: ``process`` (pre-process + inference) in the inference thread,
  then ``finish`` (post-processing) in a thread of its own, so the next batch runs ``process``
  while this one is finished. At most ``pipeline_depth`` batches are handed to ``finish`` (being
  finished or waiting); when it is behind, the worker waits with its next batch in hand, the
  queue fills and submitters get :class:`QueueFull`. ``pipeline_depth = 0``: both stages one
  after the other in the inference thread.
- :meth:`Batcher.stop` refuses new jobs, runs everything already queued (through both stages),
  and returns.

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
    batch_seconds_ema: float = 0.0  # seconds from a batch's first stage starting to its end
    started: dict[int, float] = field(default_factory=dict)  # batches in either stage: start

    @property
    def running_since(self) -> float | None:
        """Monotonic time the oldest batch still in a stage started (``None``: idle)."""
        return min(self.started.values(), default=None)

    def begin(self, jobs: list[Job]) -> None:
        self.started[id(jobs)] = time.monotonic()

    def end(self, jobs: list[Job]) -> None:
        seconds = time.monotonic() - self.started.pop(id(jobs))
        ema = self.batch_seconds_ema
        self.batch_seconds_ema = seconds if ema == 0 else 0.8 * ema + 0.2 * seconds


_FAILED = object()  # what a stage that raised returns (its jobs already failed)


class Batcher:
    """Queue + worker. Create inside the running event loop's thread; call :meth:`start`."""

    def __init__(
        self,
        process: Callable[[list[Job]], Any],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        finish: Callable[[list[Job], Any], Sequence[Any]] | None = None,
        pipeline_depth: int = 1,
        executor: Executor | None = None,
        finish_executor: Executor | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        on_batch_start: Callable[[list[Job]], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
        on_batch_failed: Callable[[], None] | None = None,
    ) -> None:
        """``process(jobs)``: the batch's results, or with ``finish`` what ``finish(jobs, staged)``
        turns into them. ``on_drop(reason)``: a job left unrun (its request gave up);
        ``on_batch_failed()``: a stage raised. Both are called on the event loop."""
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0 or pipeline_depth < 0:
            raise ValueError(
                "max_batch and max_queue must be >= 1, max_delay_s and pipeline_depth >= 0"
            )
        self.process = process
        self.finish = finish
        self.pipelined = finish is not None and pipeline_depth > 0
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="maskrt-infer")
        self._own_finish_executor = finish_executor is None and self.pipelined
        self._finish_executor = finish_executor
        if self._own_finish_executor:
            self._finish_executor = ThreadPoolExecutor(1, thread_name_prefix="maskrt-post")
        self._handoff = asyncio.Semaphore(max(pipeline_depth, 1))  # batches in stage B
        self._finishing: set[asyncio.Task[None]] = set()
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
        if self._own_finish_executor and self._finish_executor is not None:
            self._finish_executor.shutdown(wait=False)

    def running_for(self) -> float:
        """Seconds the oldest batch in either stage has been running (0 when idle)."""
        since = self.stats.running_since
        return 0.0 if since is None else time.monotonic() - since

    async def _run(self) -> None:
        try:
            await self._form_batches()
            await asyncio.gather(*self._finishing)  # drain: batches still in stage B
        except asyncio.CancelledError:
            for task in self._finishing:
                task.cancel()
            raise

    async def _form_batches(self) -> None:
        """Form and run batches until stopping with the queue empty."""
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
        """Run the batch's first stage (both, when not pipelined); hand it to stage B once there
        is room there, and return so that the worker forms the next batch meanwhile."""
        self.stats.begin(jobs)
        handed_off = False
        try:
            self._on_batch_start(jobs)
            if not self.pipelined:
                results = await self._stage(loop, self._executor, jobs, self._serial, final=True)
                self._resolve(jobs, results)
                return
            staged = await self._stage(loop, self._executor, jobs, self.process)
            if staged is _FAILED:
                return
            await self._handoff.acquire()  # stage B is behind: wait, and let the queue fill
            task = loop.create_task(self._finish(loop, jobs, staged), name="maskrt-finish")
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
            handed_off = True
        except asyncio.CancelledError:
            self._drop_all(jobs)
            raise
        finally:
            if not handed_off:
                self.stats.end(jobs)

    async def _finish(self, loop: asyncio.AbstractEventLoop, jobs: list[Job], staged: Any) -> None:
        """Stage B of one batch, skipped when every job of it has given up."""
        try:
            if not all(job.future.done() for job in jobs):
                assert self.finish is not None and self._finish_executor is not None
                results = await self._stage(
                    loop, self._finish_executor, jobs, self.finish, staged, final=True
                )
                self._resolve(jobs, results)
        except asyncio.CancelledError:
            self._drop_all(jobs)
            raise
        finally:
            self._handoff.release()
            self.stats.end(jobs)

    def _serial(self, jobs: list[Job]) -> Sequence[Any]:
        staged = self.process(jobs)
        return staged if self.finish is None else self.finish(jobs, staged)

    async def _stage(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        jobs: list[Job],
        fn: Callable[..., Any],
        *args: Any,
        final: bool = False,
    ) -> Any:
        """``fn(jobs, *args)`` in ``executor``; when it raises (or, as the ``final`` stage, gives
        the wrong number of results) the batch's jobs fail and :data:`_FAILED` is returned."""
        try:
            out = await loop.run_in_executor(executor, fn, jobs, *args)
            if final and len(out) != len(jobs):
                raise RuntimeError(f"process returned {len(out)} results for {len(jobs)} jobs")
            return out
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
            return _FAILED

    @staticmethod
    def _resolve(jobs: list[Job], results: Any) -> None:
        if results is _FAILED:
            return
        for job, result in zip(jobs, results):
            if not job.future.done():
                job.future.set_result(result)

    @staticmethod
    def _drop_all(jobs: list[Job]) -> None:
        for job in jobs:
            job.drop("server stopping")
