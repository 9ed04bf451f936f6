"""Admission by decoded size: what bounds the server's memory is pixels, not requests or bytes.

A PNG of 6000x6000 zeros is a few kB on the wire and 108 MB decoded, so neither the upload limit
nor the per-image pixel limit bounds what a request costs. Before anything is decoded, the sizes
in the images' headers are added up and checked against two budgets:

- per request (``max_request_pixels``): more is refused (HTTP 413), whatever the server is doing;
- in flight (``max_inflight_pixels``): the pixels of every admitted request that is decoding,
  queued or in a batch; a request that would go past it is refused until others finish (HTTP 503
  with ``Retry-After``).

A decoded pixel is 3 bytes (uint8 RGB) while it waits, and at most ~8 while Pillow decodes it, so
the in-flight budget bounds the decoded images' memory (docs/server.md states the figures).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from maskrt.runtime.errors import TooLarge, Unavailable


class PixelBudget:
    """Decoded pixels admitted and not yet released, against the two limits."""

    def __init__(
        self, per_request: int, in_flight: int, on_change: Callable[[int], object] = lambda n: None
    ) -> None:
        self.per_request = per_request
        self.limit = in_flight
        self.in_flight = 0
        self.on_change = on_change  # the in-flight count, for the maskrt_inflight_pixels gauge

    @contextlib.contextmanager
    def admit(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the in-flight budget for the ``with`` block, or refuse them:
        :class:`TooLarge` over the per-request budget, :class:`Unavailable` (retry in 1 s) when
        the server holds too many."""
        if pixels > self.per_request:
            raise TooLarge(
                "too_many_pixels",
                f"the request's images have {pixels} pixels in all; the limit is "
                f"{self.per_request} per request",
            )
        if self.in_flight + pixels > self.limit:
            raise Unavailable(
                "pixel_budget_full",
                f"the server is busy with {self.in_flight} decoded pixels in flight (limit "
                f"{self.limit}); retry in 1 s",
                retry_after_s=1,
            )
        self.in_flight += pixels
        self.on_change(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= pixels
            self.on_change(self.in_flight)
