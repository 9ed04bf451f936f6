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

from maskrt.runtime.dataplane import DataPlane, ImageResult, Reader


async def infer_request(plane: DataPlane, request: Request, read: Reader) -> list[ImageResult]:
    """``plane``'s results for the images ``read`` gives; the request's metrics are labelled with
    the model and version that answered."""
    scope = request.scope["state"]
    scope["model"] = answering(plane)
    return await plane.infer(
        read,
        request_id=scope["request_id"],
        arrived=scope["start"],
        gone=functools.partial(_disconnected, request.receive),
    )


def answering(plane: DataPlane) -> tuple[str, str]:
    """The model name and version that label a request to ``plane`` in the request metrics
    (:class:`~maskrt.runtime.errors.Unavailable` while it is not loaded)."""
    served = plane.served_model()
    return served.name, served.model_version


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
