"""The data plane: the one object every front door calls, whatever its protocol.

A front door (the HTTP app of :mod:`maskrt.server`, the Ray Serve ingress, a gRPC server) parses
its wire format into encoded images and :class:`~maskrt.runtime.pipeline.PostOptions`, calls
:meth:`DataPlane.infer`, and encodes the :class:`ImageResult` list it gets back, or maps the
:mod:`~maskrt.runtime.errors` it raises to its own statuses. It also asks the data plane whether it
is alive and ready, what model it serves (:class:`ServedModel`) and what it has done
(:class:`~maskrt.runtime.statistics.Statistics`).

:meth:`DataPlane.infer` is the path of every request: it counts the request in flight, holds it to
its deadline (``request_timeout_s`` from its arrival: upload, decode, queue and inference
together; sooner when the request's :attr:`PostOptions.timeout_s` says so), reads its images (the
front door's ``read``) while announcing them to the batcher, admits their decoded size read from
their headers (:mod:`~maskrt.runtime.admission`), decodes them in threads, and has them inferred
(:meth:`DataPlane._run`): in this process by the dynamic batcher
(:class:`maskrt.runtime.local.LocalDataPlane`), or elsewhere (the Ray model deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

from maskrt.devices import usable_cores
from maskrt.runtime.admission import PixelBudget
from maskrt.runtime.backends.base import Backend
from maskrt.runtime.decode import (
    DecodedImage,
    admit_pixels,
    decode_batch,
    decode_image,
    image_pixels,
)
from maskrt.runtime.errors import (
    BadRequest,
    ClientGone,
    DeadlineExceeded,
    Redirect,
    Unavailable,
    UnknownModel,
)
from maskrt.runtime.options import RuntimeOptions
from maskrt.runtime.pipeline import Inferred, PostOptions
from maskrt.runtime.statistics import Statistics

log = logging.getLogger("maskrt.runtime")
T = TypeVar("T")

Status = Literal["loading", "ready", "draining", "failed"]


@dataclass(frozen=True)
class EncodedImage:
    """One encoded image of a request; ``name`` labels it in error messages (``images[2]``)."""

    data: bytes
    name: str


@dataclass
class ImageResult:
    """What :meth:`DataPlane.infer` answers for one image: the image as decoded, and its
    detections."""

    image: DecodedImage
    inferred: Inferred


@dataclass(frozen=True)
class ServedModel:
    """The model being served, as every front door describes it."""

    name: str
    version: str  # first 12 hex digits of the checkpoint's sha256
    backend: str
    device: str
    classes: tuple[str, ...]  # index = class id; 0 is the background
    canvas: int
    mask_size: int
    max_detections: int
    max_batch: int
    weights_verified: bool
    fallback_from: str | None = None  # the backend that failed to open; ``backend`` serves instead
    fallback_reason: str | None = None  # why it failed
    model_version: str = "1"  # the version it answers to (a repository's version folder)

    @classmethod
    def of(
        cls, backend: Backend, max_batch: int, name: str | None = None, model_version: int = 1
    ) -> ServedModel:
        """``name``: what the model answers to (``MODEL_NAME``, a repository's folder); default:
        its config name. Every front door and the metrics name the model from here."""
        info = backend.info
        return cls(
            name=name or info.name,
            version=info.version,
            backend=backend.name,
            device=str(backend.device),
            classes=tuple(info.classes),
            canvas=info.canvas,
            mask_size=info.mask_size,
            max_detections=info.max_detections,
            max_batch=max_batch,
            weights_verified=info.weights_verified,
            fallback_from=None if backend.fallback is None else backend.fallback.wanted,
            fallback_reason=None if backend.fallback is None else backend.fallback.reason,
            model_version=str(model_version),
        )

    def ref(self) -> dict[str, str]:
        """Which model answered: name, version (of the weights), the version it answers to,
        backend, device."""
        return {
            "name": self.name,
            "version": self.version,
            "model_version": self.model_version,
            "backend": self.backend,
            "device": self.device,
        }

    def describe(self) -> dict[str, Any]:
        """:meth:`ref` and what a client needs to call the model."""
        return {
            **self.ref(),
            "classes": list(self.classes),
            "canvas": self.canvas,
            "mask_size": self.mask_size,
            "max_detections": self.max_detections,
            "max_batch": self.max_batch,
            "weights_verified": self.weights_verified,
            "fallback_reason": self.fallback_reason,
        }


Reader = Callable[[], Awaitable[tuple[list[EncodedImage], PostOptions]]]


@dataclass
class Shared:
    """What the data planes of one server share, whatever model each serves: the decoding threads,
    the pixel budgets, and the cap on the images queued in all their batchers together
    (``max_queue``; ``queued()`` counts them). Each plane's own batcher has its own cap under it,
    and a plane may always queue its fair share (``max_queue`` / ``planes()``), so that one
    model's flood cannot starve another."""

    pixels: PixelBudget
    decode_executor: ThreadPoolExecutor
    max_queue: int
    queued: Callable[[], int] = lambda: 0
    planes: Callable[[], int] = lambda: 1

    @classmethod
    def create(cls, options: RuntimeOptions, statistics: Statistics) -> Shared:
        """The resources of a server with ``options``' limits, reporting its pixels in flight to
        ``statistics``."""
        return cls(
            PixelBudget(
                options.max_request_pixels, options.max_inflight_pixels, statistics.pixels_admitted
            ),
            ThreadPoolExecutor(
                options.decode_threads or default_decode_threads(),
                thread_name_prefix="maskrt-decode",
            ),
            options.max_queue,
        )

    def admits(self, own_depth: int, images: int) -> bool:
        """Whether a plane with ``own_depth`` images queued may queue ``images`` more."""
        if self.queued() + images <= self.max_queue:
            return True
        return own_depth + images <= max(1, self.max_queue // max(1, self.planes()))

    def close(self) -> None:
        self.decode_executor.shutdown(wait=False, cancel_futures=True)


def default_decode_threads() -> int:
    """The usable cores, at most 4: decoding more images at once only queues them for the model."""
    return min(4, usable_cores())


class DataPlane(ABC):
    """What front doors call; :meth:`start` it in the running event loop, :meth:`stop` it there.

    ``status``: ``loading`` -> ``ready`` -> ``draining``, or ``loading`` -> ``failed``.
    """

    def __init__(
        self,
        options: RuntimeOptions,
        statistics: Statistics | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.options = options
        self.statistics = statistics if statistics is not None else Statistics()
        self.status: Status = "loading"
        self.model: ServedModel | None = None
        self.owns_shared = shared is None
        self.shared = Shared.create(options, self.statistics) if shared is None else shared
        self.pixels = self.shared.pixels
        self.decode_executor = self.shared.decode_executor
        admit_pixels(options.max_image_pixels)
        self.decode_device: torch.device | None = None  # nvJPEG decodes there when it is CUDA

    # -- life cycle ----------------------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Begin loading in the background (front doors answer probes meanwhile)."""

    async def stop(self) -> None:
        """Drain (what is queued still runs), then free the threads."""
        self.begin_drain()
        if self.owns_shared:
            self.shared.close()

    def begin_drain(self) -> None:
        """Not ready any more (the server is stopping); requests already queued still run."""
        if self.status in ("loading", "ready"):
            self.status = "draining"
            log.info("draining: finishing queued requests")

    # -- what front doors ask ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def stuck_for(self) -> float | None:
        """Seconds a batch has been running, when that is so long that the process should count
        as unhealthy; else ``None``."""
        return None

    def not_ready(self) -> Unavailable:
        """Why this data plane takes no request now."""
        if self.status == "failed":  # what failed (paths, library errors) is in the log only
            return Unavailable(
                "not_ready", "the model failed to load (see the server log)", retry_after_s=30
            )
        if self.status == "draining":
            return Unavailable("shutting_down", "the server is shutting down", retry_after_s=5)
        return Unavailable("not_ready", "the model is loading and warming up", retry_after_s=5)

    def served_model(self) -> ServedModel:
        """The model; :class:`~maskrt.runtime.errors.Unavailable` before it is loaded."""
        if self.model is None:
            raise self.not_ready()
        return self.model

    # -- inference -----------------------------------------------------------------------------

    async def infer(
        self,
        read: Reader,
        *,
        request_id: str = "",
        arrived: float | None = None,
        gone: Callable[[], Awaitable[None]] | None = None,
    ) -> list[ImageResult]:
        """The results of one request's images, in order. ``read()`` gives the images and the
        options (the front door parses its body there, while the batcher waits for them);
        ``arrived`` is the request's ``time.perf_counter()`` at arrival (default: now); ``gone()``
        returns when the client goes away (its images are dropped and
        :class:`~maskrt.runtime.errors.ClientGone` is raised). The options' ``timeout_s`` (the
        client's own deadline from arrival: Triton's ``timeout``, a gRPC deadline) shortens the
        request's, never lengthens it.

        Raises :mod:`~maskrt.runtime.errors`' errors, and what ``read`` raises. A request that
        starts while the data plane is not ready (loading, draining) is refused; one that started
        before a drain is answered."""
        if not self.ready:
            raise self.not_ready()
        arrived = time.perf_counter() if arrived is None else arrived
        loop = asyncio.get_running_loop()
        limit, whose = self.options.request_timeout_s, "the request timeout"
        deadline = loop.time() + limit - (time.perf_counter() - arrived)
        self.statistics.request_started()
        ok: bool | None = False
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                with contextlib.ExitStack() as admitted:
                    with self._expecting():
                        images, options = await read()
                        if options.timeout_s is not None and options.timeout_s < limit:
                            limit, whose = options.timeout_s, "the request's own timeout"
                            timeout.reschedule(deadline - self.options.request_timeout_s + limit)
                        pixels = await self._header_pixels(images)
                        admitted.enter_context(self.pixels.admit(pixels))
                        decoded = await self._decode_all(images)
                    inferred = await self._run(
                        [d.tensor for d in decoded], options, request_id, timeout.expired, gone
                    )
            ok = True
        except TimeoutError:
            raise DeadlineExceeded("timeout", f"no answer within {whose} of {limit:g} s") from None
        except (Redirect, UnknownModel, BadRequest):  # the form named another model: not ours
            ok = None
            raise
        finally:
            self.statistics.request_ended(time.perf_counter() - arrived, ok)
        return [ImageResult(d, i) for d, i in zip(decoded, inferred)]

    def _expecting(self) -> contextlib.AbstractContextManager[None]:
        """Held while a request's images are read and decoded (the batcher may wait for them)."""
        return contextlib.nullcontext()

    @abstractmethod
    async def _run(
        self,
        images: Sequence[torch.Tensor],
        options: PostOptions,
        request_id: str,
        expired: Callable[[], bool],
        gone: Callable[[], Awaitable[None]] | None,
    ) -> list[Inferred]:
        """Infer decoded uint8 ``[3, H, W]`` images. Cancelled at the request's deadline (then
        ``expired()`` is true) or when the server stops; ``gone()``: see :func:`unless_gone`."""

    async def _header_pixels(self, images: list[EncodedImage]) -> int:
        """The decoded size of the images, from their headers (in a thread: Pillow parses them)."""
        max_pixels = self.options.max_image_pixels

        def count() -> int:
            return sum(image_pixels(i.data, max_pixels=max_pixels, name=i.name) for i in images)

        return await asyncio.get_running_loop().run_in_executor(self.decode_executor, count)

    async def _decode_all(self, images: list[EncodedImage]) -> list[DecodedImage]:
        loop = asyncio.get_running_loop()
        device = self.decode_device
        cuda = device is not None and device.type == "cuda"
        pinned = self.options.pinned_copies and cuda
        if self.options.gpu_decode and cuda and len(images) > 1:
            assert device is not None
            batch = functools.partial(
                decode_batch,
                [(i.data, i.name) for i in images],
                max_pixels=self.options.max_image_pixels,
                device=device,
                pinned_copies=pinned,
            )
            decoded = await loop.run_in_executor(self.decode_executor, batch)
        else:
            decode = functools.partial(
                decode_image,
                max_pixels=self.options.max_image_pixels,
                device=device,
                pinned_copies=pinned,
            )
            decoded = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        self.decode_executor, functools.partial(decode, i.data, name=i.name)
                    )
                    for i in images
                )
            )
        for d in decoded:
            self.statistics.image_decoded(d.decoder, d.seconds)
        return decoded


async def unless_gone(work: asyncio.Future[T], gone: Callable[[], Awaitable[None]] | None) -> T:
    """``work``'s result; if ``gone()`` returns first (the client went away), ``work`` is
    cancelled and :class:`~maskrt.runtime.errors.ClientGone` raised."""
    watcher = None if gone is None else asyncio.ensure_future(gone())
    either: set[asyncio.Future[Any]] = {work} if watcher is None else {work, watcher}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ClientGone()
    finally:
        if watcher is not None:
            watcher.cancel()
        if not work.done():
            work.cancel()
        # a cancelled gather ends with CancelledError later; retrieve it, so asyncio does not log
        # "_GatheringFuture exception was never retrieved" for every client that went away
        work.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
