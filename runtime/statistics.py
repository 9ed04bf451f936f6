"""What the data plane has done since it started, counted as it happens.

The data plane reports each event to one :class:`Statistics` object: a front door reads the counts
(a statistics answer, a status page), and a subclass exports them as they change (the HTTP server's
Prometheus metrics, :class:`maskrt.server.metrics.Metrics`, extends each method). Each count is
written by one thread only (requests and queueing on the event loop, a batch's stages in the
inference and post-processing threads), so no lock is needed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Tally:
    """How many, and how many seconds they took in all."""

    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.seconds += seconds


@dataclass
class BatchTally:
    """The stages of the batches of one size (Triton's ``batch_stats``)."""

    preprocess: Tally = field(default_factory=Tally)
    inference: Tally = field(default_factory=Tally)
    postprocess: Tally = field(default_factory=Tally)


class Statistics:
    """Counts and times of requests, images and batches, and the gauges of what is in flight."""

    def __init__(self) -> None:
        self.requests_ok = Tally()  # answered, arrival to answer
        self.requests_failed = Tally()  # refused or failed, arrival to error
        self.decode = Tally()  # per image
        self.queue = Tally()  # per image, submitted to its batch's start
        self.preprocess = Tally()  # per batch; count = batches run
        self.inference = Tally()
        self.postprocess = Tally()
        self.by_batch_size: collections.defaultdict[int, BatchTally] = collections.defaultdict(
            BatchTally
        )
        self.last_answer_ms = 0  # wall-clock milliseconds of the last answer (0: none yet)
        self.images = 0
        self.detections = 0
        self.failed_batches = 0
        self.dropped: collections.Counter[str] = collections.Counter()  # by reason
        self.requests_in_flight = 0
        self.queue_depth = 0
        self.pixels_in_flight = 0

    def for_model(self, name: str, version: str) -> Statistics:
        """The statistics of one loaded model version (each has its own data plane); a subclass
        exports them labelled by ``name`` and ``version``."""
        return Statistics()

    def model_unloaded(self, name: str, version: str) -> None:
        """``name`` ``version`` was unloaded: its statistics are gone (an exporter drops its
        series, so that only loaded versions have them)."""

    def model_loaded(
        self, name: str, backend: str, device: str, fallback_from: str | None = None
    ) -> None:
        """The model is loaded and warm (or a new one replaced it); ``fallback_from``: the backend
        that failed to open, when ``backend`` serves instead of it (a degraded server)."""

    def request_started(self) -> None:
        self.requests_in_flight += 1

    def request_ended(self, seconds: float, ok: bool | None) -> None:
        """``ok``: answered, or refused or failed; ``None``: not this model's, its form naming
        another (handed over, :class:`~maskrt.runtime.errors.Redirect`, and counted there) or one
        not served."""
        self.requests_in_flight -= 1
        if ok is None:
            return
        (self.requests_ok if ok else self.requests_failed).add(seconds)
        if ok:
            self.last_answer_ms = time.time_ns() // 1_000_000

    def image_decoded(self, decoder: str, seconds: float) -> None:
        """``decoder``: ``pillow`` or ``nvjpeg``."""
        self.decode.add(seconds)

    def pixels_admitted(self, in_flight: int) -> None:
        """The decoded pixels of every admitted request, after one came or went."""
        self.pixels_in_flight = in_flight

    def queued(self, depth: int) -> None:
        """Images waiting for a batch, after one came or went."""
        self.queue_depth = depth

    def batch_started(self, queue_waits: Sequence[float]) -> None:
        """A batch formed; ``queue_waits``: seconds each of its images waited."""
        self.queue.add(sum(queue_waits), len(queue_waits))

    def batch_inferred(self, images: int, preprocess_s: float, inference_s: float) -> None:
        self.images += images
        self.preprocess.add(preprocess_s)
        self.inference.add(inference_s)
        sized = self.by_batch_size[images]
        sized.preprocess.add(preprocess_s)
        sized.inference.add(inference_s)

    def batch_finished(self, images: int, postprocess_s: float, detections: int) -> None:
        self.postprocess.add(postprocess_s)
        self.by_batch_size[images].postprocess.add(postprocess_s)
        self.detections += detections

    def batch_failed(self) -> None:
        self.failed_batches += 1

    def image_dropped(self, reason: str) -> None:
        """An image left unrun because its request gave up (``timeout``, ``client
        disconnected``, ``server stopping``)."""
        self.dropped[reason] += 1
