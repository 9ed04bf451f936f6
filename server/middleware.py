"""Pure ASGI middleware (no buffering), one per concern.

- :class:`RequestContextMiddleware`, the outermost: gives every HTTP request its id (the client's
  ``X-Request-ID`` when sane, else a new one; echoed on the answer and carried by every log line),
  times it into the request metrics, writes the access log, and answers a crash with a 500.
- :class:`SecurityHeadersMiddleware`: headers every answer carries unless its route set them
  (the Content-Security-Policy, ``nosniff``, no framing).
- :class:`BodyLimitMiddleware`: refuses a body over ``max_upload_bytes``, from its declared
  ``Content-Length`` before reading it, else as soon as the streamed bytes pass the limit; and a
  body that trickles in slower than ``min_body_rate`` (408, the connection closed).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maskrt.runtime.errors import ClientGone, InferenceError
from maskrt.server.errors import ApiError, BodyTooLarge, error_response, from_runtime
from maskrt.server.logging import request_id_var
from maskrt.server.metrics import Metrics

log = logging.getLogger("maskrt.server")
access_log = logging.getLogger("maskrt.access")

# probes and scrapes, polled every few seconds: access-logged at debug level
QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(incoming: str) -> str:
    """The client's ``X-Request-ID`` when sane (a short token: it goes into logs), else a new
    one."""
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


class RequestContextMiddleware:
    """Request id, metrics, access log and the last-resort error answer of every HTTP request.

    The ``endpoint`` label is the route's path (its template: ``/v2/models/{name}/infer``), or
    ``unmatched`` (so scanners cannot blow up the
    label set); ``model`` and ``version`` are those of the model version that answered (empty for
    a request that named none). ``scope["state"]`` gets ``request_id`` and ``start``
    (``perf_counter`` at arrival), and from an inference route ``model``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._paths: set[str] = set()

    def _known_paths(self, scope: Scope) -> set[str]:
        if not self._paths:  # Starlette puts the app in the scope; its routes are final by now
            self._paths.update(route_paths(scope["app"].routes))
        return self._paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(Headers(scope=scope).get("x-request-id", ""))
        scope.setdefault("state", {}).update(request_id=rid, start=start)
        token = request_id_var.set(rid)
        status = 500
        started = False
        received = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting_receive, send_with_id)
        except (ClientGone, ClientDisconnect):
            status = 499  # nginx's "client closed request"; nothing is sent
        except (ApiError, InferenceError) as exc:
            if not started:
                error = exc if isinstance(exc, ApiError) else from_runtime(exc)
                await error_response(error, scope["path"])(scope, receive, send_with_id)
        except Exception as exc:
            log.error("unhandled error", exc_info=exc)
            if not started:
                internal = ApiError(
                    500, "internal_error", f"internal server error; request id {rid}"
                )
                await error_response(internal, scope["path"])(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - start
            self._record(scope, status, duration, received)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, duration: float, received: int) -> None:
        path = scope.get("path", "")
        endpoint = getattr(scope.get("route"), "path", None) or path  # a route's template
        endpoint = endpoint if endpoint in self._known_paths(scope) else "unmatched"
        model = scope.get("state", {}).get("model")  # set by infer_request
        self.metrics.request_answered(endpoint, str(status), model, duration)
        level = logging.DEBUG if path in QUIET_PATHS and status < 500 else logging.INFO
        access_log.log(
            level,
            "%s %s %d",
            scope.get("method"),
            path,
            status,
            extra={
                "fields": {
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "bytes_in": received,
                    "client": (scope.get("client") or ("", 0))[0],
                }
            },
        )


def route_paths(routes: Iterable[BaseRoute]) -> Iterator[str]:
    """The paths of ``routes``, those of included routers too (FastAPI >= 0.16x keeps an included
    router as one route holding the ``original_router``; older versions copy its routes)."""
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str) and path:
            yield path
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from route_paths(included.routes)


class SecurityHeadersMiddleware:
    """``headers`` on every HTTP answer, each unless the app set it already (a page with a policy
    of its own)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: at once when ``Content-Length`` says so, else
    :class:`~maskrt.server.errors.BodyTooLarge` from ``receive`` once the bytes read pass it.

    With ``min_rate`` (bytes per second), a body must also keep coming: after ``grace_s`` from
    the request's start it must have averaged ``min_rate``, or ``receive`` raises a 408 that closes
    the connection. Without this a client trickling a byte a second holds a connection (and the
    request's buffers) for the whole request timeout, and a few kB/s fill ``MAX_CONNECTIONS``.
    """

    def __init__(self, app: ASGIApp, limit: int, min_rate: int = 0, grace_s: float = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.min_rate = min_rate
        self.grace_s = grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "").strip()
        if declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            await error_response(BodyTooLarge(self.limit), scope["path"])(scope, receive, send)
            return
        start = asyncio.get_running_loop().time()
        received = 0
        complete = self.min_rate == 0

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in (or not timed): what remains is the disconnect
                message = await receive()
            else:
                deadline = start + self.grace_s + received / self.min_rate
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise self._too_slow(received) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = complete or not message.get("more_body", False)
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)

    def _too_slow(self, received: int) -> ApiError:
        return ApiError(
            408,
            "body_timeout",
            f"the request body came slower than {self.min_rate} bytes/s ({received} bytes "
            f"received); send it faster",
            {"Connection": "close"},
        )
