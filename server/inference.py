"""One request's images through the batcher, for any route that serves inference.

:func:`infer_request` is the path every inference route shares, whatever its wire format: it
counts the request in flight, holds it to its deadline (``request_timeout_s`` from its arrival:
upload, decode, queue and inference together), announces the images to the batcher while the
route reads them (so a batch forming may wait for them), admits their decoded size read from their
headers (:mod:`~maskrt.runtime.admission`: 413 over the per-request pixel budget, 503 over the
in-flight one), decodes them in threads, queues them (503 when full), and waits for their results
while watching for the client going away (its images are dropped before inference). It answers
with one :class:`ImageResult` per image or raises :class:`~maskrt.server.errors.ApiError` (413,
503, 504, 500), :class:`ClientDisconnected`, or what ``read`` raises. The route turns the results
into its own response.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

from maskrt.runtime.batcher import Batcher, BatcherClosed, BatchFailed, Job, QueueFull
from maskrt.runtime.decode import DecodedImage, image_pixels
from maskrt.runtime.pipeline import Pipeline, PostOptions
from maskrt.server.errors import ApiError, ClientDisconnected
from maskrt.server.state import JobResult, ServerState, Work


@dataclass(frozen=True)
class Upload:
    """One encoded image of a request; ``name`` labels it in error messages (``images[2]``)."""

    data: bytes
    name: str


@dataclass
class ImageResult:
    """One image's detections, its decoded size and the time each stage took."""

    image: DecodedImage
    queue_wait_s: float
    result: JobResult


Reader = Callable[[], Awaitable[tuple[list[Upload], PostOptions]]]


async def infer_request(state: ServerState, request: Request, read: Reader) -> list[ImageResult]:
    """Read (``read()``: the request's images and options), decode, batch and infer one request."""
    batcher, pipeline = state.ready_batcher()
    settings = state.settings
    loop = asyncio.get_running_loop()
    elapsed = time.perf_counter() - request.scope["state"]["start"]
    deadline = loop.time() + settings.request_timeout_s - elapsed
    jobs: list[Job] = []
    state.metrics.inflight.inc()
    try:
        async with asyncio.timeout_at(deadline):
            with contextlib.ExitStack() as admitted:
                with batcher.expecting():
                    uploads, options = await read()
                    pixels = await _pixels(state, uploads)
                    admitted.enter_context(state.pixels.admit(pixels))  # 413 / 503 if over
                    decoded = await _decode_all(state, pipeline, uploads)
                rid = request.scope["state"]["request_id"]
                jobs = _submit(state, batcher, decoded, options, rid)
                results = await _wait(jobs, request.receive)
    except TimeoutError:
        for job in jobs:
            job.drop("timeout")
        raise ApiError(
            504,
            "timeout",
            f"no answer within the request timeout of {settings.request_timeout_s:g} s",
        ) from None
    except BatchFailed:
        rid = request.scope["state"]["request_id"]
        raise ApiError(
            500, "inference_failed", f"inference failed for this request's batch; request id {rid}"
        ) from None
    finally:
        state.metrics.inflight.dec()
    return [ImageResult(d, j.queue_wait_s, r) for d, j, r in zip(decoded, jobs, results)]


async def _pixels(state: ServerState, uploads: list[Upload]) -> int:
    """The decoded size of the uploads, from their headers (a thread: Pillow parses them)."""
    max_pixels = state.settings.max_image_pixels

    def count() -> int:
        return sum(image_pixels(u.data, max_pixels=max_pixels, name=u.name) for u in uploads)

    return await asyncio.get_running_loop().run_in_executor(state.decode_executor, count)


async def _decode_all(
    state: ServerState, pipeline: Pipeline, uploads: list[Upload]
) -> list[DecodedImage]:
    loop = asyncio.get_running_loop()
    decode = functools.partial(pipeline.decode, max_pixels=state.settings.max_image_pixels)
    decoded = await asyncio.gather(
        *(
            loop.run_in_executor(
                state.decode_executor, functools.partial(decode, u.data, name=u.name)
            )
            for u in uploads
        )
    )
    for d in decoded:
        state.metrics.decode.labels(d.decoder).observe(d.seconds)
    return decoded


def _submit(
    state: ServerState,
    batcher: Batcher,
    decoded: list[DecodedImage],
    options: PostOptions,
    request_id: str,
) -> list[Job]:
    try:
        return batcher.submit([Work(d.tensor, options) for d in decoded], request_id)
    except QueueFull as exc:
        raise ApiError(
            503,
            "queue_full",
            f"the server is busy ({batcher.depth} images queued); retry in {exc.retry_after_s} s",
            {"Retry-After": str(exc.retry_after_s)},
        ) from None
    except BatcherClosed:
        raise state.not_ready() from None


async def _wait(jobs: list[Job], receive: Receive) -> list[JobResult]:
    """The jobs' results; if the client disconnects first, its jobs are dropped."""
    gathered = asyncio.gather(*(job.future for job in jobs))
    watcher = asyncio.ensure_future(_disconnected(receive))
    either: set[asyncio.Future[Any]] = {gathered, watcher}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if gathered.done():
            return list(gathered.result())
        for job in jobs:
            job.drop("client disconnected")
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not gathered.done():
            gathered.cancel()
        # dropped jobs end the gather with CancelledError later; retrieve it, so asyncio does not
        # log "_GatheringFuture exception was never retrieved" for every client that went away
        gathered.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
