"""One HTTP request's images through the data plane, for any route that serves inference.

:func:`infer_request` hands the data plane the route's ``read`` (the request's images and options,
parsed from its body), the request's id and arrival time (its deadline counts from there), and a
way to tell that the client went away (its images are then dropped before inference). It answers
with one :class:`~maskrt.runtime.dataplane.ImageResult` per image, or raises the runtime's errors
(answered through :data:`maskrt.server.errors.STATUS`) and what ``read`` raises.
"""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.types import Receive

from maskrt.runtime.dataplane import ImageResult, Reader
from maskrt.server.state import AppState


async def infer_request(state: AppState, request: Request, read: Reader) -> list[ImageResult]:
    scope = request.scope["state"]
    return await state.plane.infer(
        read,
        request_id=scope["request_id"],
        arrived=scope["start"],
        gone=functools.partial(_disconnected, request.receive),
    )


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
